"""``resume``: continue stepping after a pause."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from ray_interactive.core.commands.base import CommandBase

if TYPE_CHECKING:
    from ray_interactive.core.steering import Steering


class Resume(CommandBase):
    """Continue stepping after a pause."""

    kind: Literal["resume"] = "resume"

    for_agents: ClassVar[bool] = True

    def apply(self, run: Steering) -> str:
        was, run.state.paused = run.state.paused, False
        if was:
            run.state.message = None  # a health pause's message, say: the person has seen it
        return "resumed" if was else "was not paused"
