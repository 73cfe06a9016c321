"""``set_grad_clip``: clip the global gradient norm (or stop clipping)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from ray_interactive.core.commands.base import CommandBase

if TYPE_CHECKING:
    from ray_interactive.core.steering import Steering


class SetGradClip(CommandBase):
    """Clip the global gradient norm to ``max_norm``; ``None`` turns clipping off."""

    kind: Literal["set_grad_clip"] = "set_grad_clip"
    max_norm: float | None = Field(gt=0.0, le=1e6, description="the largest global gradient norm (null: no clipping)")

    label: ClassVar[str] = "Set clipping"
    section: ClassVar[str] = "optimizer"
    example: ClassVar[str] = "max_norm=1.0"
    for_agents: ClassVar[bool] = True

    def apply(self, run: Steering) -> str:
        run.state.grad_clip = self.max_norm
        return "gradient clipping off" if self.max_norm is None else f"clip grad norm at {self.max_norm:g}"
