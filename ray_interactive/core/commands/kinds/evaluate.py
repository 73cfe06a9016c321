"""``evaluate``: run the task's evaluation now."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

from ray_interactive.core.commands.base import CommandBase, RunView

if TYPE_CHECKING:
    from ray_interactive.core.steering import Steering


class Evaluate(CommandBase):
    """Run the task's evaluation now."""

    kind: Literal["evaluate"] = "evaluate"

    for_agents: ClassVar[bool] = True

    def check(self, view: RunView) -> Evaluate:
        if not view.has_eval:
            raise ValueError("this task has no evaluation (its Task does not define evaluate())")
        return self

    def apply(self, run: Steering) -> str:
        metrics = run.evaluator.run(flag=False)
        text = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        return f"{text} (NOT FINITE: {', '.join(bad)})" if bad else text
