"""``pause``: stop stepping after the current step."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from ray_interactive.core.commands.base import CommandBase

if TYPE_CHECKING:
    from ray_interactive.core.steering import Steering


class Pause(CommandBase):
    """Stop stepping after the current step; other commands still apply while paused."""

    kind: Literal["pause"] = "pause"

    for_agents: ClassVar[bool] = True

    def apply(self, run: Steering) -> str:
        was, run.state.paused = run.state.paused, True
        return "already paused" if was else "paused"
