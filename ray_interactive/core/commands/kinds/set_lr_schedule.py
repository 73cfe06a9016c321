"""``set_lr_schedule``: switch to another learning-rate schedule from this step on."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from ray_interactive.core.commands.base import CommandBase
from ray_interactive.core.schedules import check_args

if TYPE_CHECKING:
    from ray_interactive.core.steering import Steering


class SetLRSchedule(CommandBase):
    """Switch, from this step on, to a learning-rate schedule over ``steps`` steps.

    ``constant`` keeps the current lr. ``linear``/``cosine`` decay from the current lr to
    ``min_lr_ratio`` times it over ``steps`` steps, then hold. ``step`` multiplies the lr by
    ``gamma`` every ``steps`` steps. An optional linear warmup precedes any of them.
    """

    kind: Literal["set_lr_schedule"] = "set_lr_schedule"
    schedule: Literal["constant", "linear", "cosine", "step"] = Field(description="the schedule's shape")
    steps: int | None = Field(default=None, ge=1, le=100_000_000, description="steps it decays over (every step: the interval)")
    min_lr_ratio: float = Field(default=0.0, ge=0.0, le=1.0, description="linear/cosine end at this times the current lr")
    gamma: float = Field(default=0.1, gt=0.0, le=1.0, description="step: the factor every `steps` steps")
    warmup_steps: int = Field(default=0, ge=0, le=100_000_000, description="a linear warmup first")

    label: ClassVar[str] = "Set schedule"
    section: ClassVar[str] = "optimizer"
    example: ClassVar[str] = "schedule=cosine steps=1000"
    for_agents: ClassVar[bool] = True
    before_step: ClassVar[bool] = True

    @model_validator(mode="after")
    def _steps_needed(self) -> SetLRSchedule:
        check_args(self.schedule, self.steps)
        return self

    def apply(self, run: Steering) -> str:
        s = run.state
        return s.schedule.start(self.schedule, s.step, self.steps, self.min_lr_ratio, self.gamma, self.warmup_steps)
