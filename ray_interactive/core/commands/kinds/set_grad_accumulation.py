"""``set_grad_accumulation``: micro-batches per optimizer step."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from ray_interactive.core.commands.base import CommandBase

if TYPE_CHECKING:
    from ray_interactive.core.steering import Steering


class SetGradAccumulation(CommandBase):
    """Use ``steps`` micro-batches per optimizer step."""

    kind: Literal["set_grad_accumulation"] = "set_grad_accumulation"
    steps: int = Field(ge=1, le=4096, description="micro-batches per optimizer step")

    label: ClassVar[str] = "Set accumulation"
    section: ClassVar[str] = "optimizer"
    example: ClassVar[str] = "steps=4"

    def apply(self, run: Steering) -> str:
        run.state.grad_accumulation = self.steps
        return f"{self.steps} micro-batches per step"
