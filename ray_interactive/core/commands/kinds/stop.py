"""``stop``: end the run cleanly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ray_interactive.core.commands.base import CommandBase, RunView

if TYPE_CHECKING:
    from ray_interactive.core.steering import Steering


class Stop(CommandBase):
    """Finish the current step, write a final checkpoint and end the run cleanly."""

    kind: Literal["stop"] = "stop"

    def accepted(self, view: RunView) -> None:
        if self.at_step is None:  # a replayed stop ends the run later
            view.stopping = True

    def apply(self, run: Steering) -> str:
        run.state.stopping = "stop command"
        return "stopping: final checkpoint follows"
