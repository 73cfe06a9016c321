"""``reset_optimizer_state``: forget the optimizer's running statistics."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from ray_interactive.core.commands.base import CommandBase, RunView
from ray_interactive.core.hparams import describe_optimizer, group_name, target_groups

if TYPE_CHECKING:
    from ray_interactive.core.steering import Steering


class ResetOptimizerState(CommandBase):
    """Forget the optimizer's running state (Adam's moments, momentum buffers, step
    counts) of every param group or one; the next steps start fresh from the current
    weights. For when the old statistics no longer fit: after a large lr change, a switch
    of data, or a rollback past a loss spike."""

    kind: Literal["reset_optimizer_state"] = "reset_optimizer_state"
    group: str | None = Field(default=None, min_length=1, max_length=64, description="one param group (default: all)")

    label: ClassVar[str] = "Reset optimizer state"
    section: ClassVar[str] = "optimizer"
    example: ClassVar[str] = "group=decay"
    for_agents: ClassVar[bool] = True  # the weights stay as they are: a safe move for an agent
    needs_description: ClassVar[bool] = True

    def check(self, view: RunView) -> ResetOptimizerState:
        target_groups(view.groups or [], self.group)
        return self

    def apply(self, run: Steering) -> str:
        opt = run.optimizer
        targets = target_groups(describe_optimizer(opt), self.group)
        cleared = 0
        for t in targets:
            for p in opt.param_groups[t]["params"]:
                cleared += opt.state.pop(p, None) is not None
        names = ", ".join(group_name(opt.param_groups[t], t) for t in targets)
        return f"cleared the optimizer state of {cleared} tensors ({names})"
