"""``update_optimizer``: set hyperparameters of the live optimizer's param groups."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field

from ray_interactive.core.commands.base import CommandBase, RunView
from ray_interactive.core.hparams import apply_update, describe_optimizer, group_name, validate_update

if TYPE_CHECKING:
    from ray_interactive.core.steering import Steering


class UpdateOptimizer(CommandBase):
    """Set hyperparameters of the live optimizer's param groups (all, or one named group).

    Keys must already exist in the param groups (``lr``, ``weight_decay``, ``betas``,
    ``eps``, ``momentum``, ...). A new ``lr`` rescales the running learning-rate schedule
    so that the very next optimizer step uses exactly that value.
    """

    kind: Literal["update_optimizer"] = "update_optimizer"
    params: dict[Annotated[str, Field(max_length=64)], Any] = Field(
        min_length=1, max_length=32, description="hyperparameter -> new value (keys of the live param groups)")
    group: str | None = Field(default=None, min_length=1, max_length=64, description="one param group (default: all)")

    label: ClassVar[str] = "Apply"
    section: ClassVar[str] = "optimizer"
    example: ClassVar[str] = "lr=3e-4"
    for_agents: ClassVar[bool] = True
    spread: ClassVar[str | None] = "params"
    before_step: ClassVar[bool] = True
    needs_description: ClassVar[bool] = True

    def check(self, view: RunView) -> UpdateOptimizer:
        validate_update(view.groups or [], self.params, self.group)
        return self

    def apply(self, run: Steering) -> str:
        targets, values = validate_update(describe_optimizer(run.optimizer), self.params, self.group)
        if "lr" in values:
            run.state.schedule.set_lrs(run.state.step, {t: values["lr"] for t in targets})
        apply_update(run.optimizer, targets, values)
        names = ", ".join(group_name(run.optimizer.param_groups[t], t) for t in targets)
        return f"set {', '.join(f'{k}={v}' for k, v in values.items())} on {names}"
