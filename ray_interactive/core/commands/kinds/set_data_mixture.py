"""``set_data_mixture``: sampling weights of the data sources."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator

from ray_interactive.core.commands.base import CommandBase, RunView, check_name
from ray_interactive.core.mixture import MAX_WEIGHT, validate_mixture

if TYPE_CHECKING:
    from ray_interactive.core.steering import Steering


class SetDataMixture(CommandBase):
    """Set sampling weights of data sources (sources not named keep their weight)."""

    kind: Literal["set_data_mixture"] = "set_data_mixture"
    weights: dict[str, float] = Field(min_length=1, max_length=256, description="source -> weight (relative)")

    label: ClassVar[str] = "Set mixture"
    section: ClassVar[str] = "data"
    example: ClassVar[str] = "base=0.7 live=0.3"
    spread: ClassVar[str | None] = "weights"
    for_agents: ClassVar[bool] = True  # the mixture agent's move (agents/mixture.py)

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        for name, w in v.items():
            check_name(name, "source")
            if not math.isfinite(w) or w < 0 or w > MAX_WEIGHT:
                raise ValueError(f"weight of source {name!r} must be a finite number >= 0 and <= {MAX_WEIGHT:g}, not {w}")
        return v

    def check(self, view: RunView) -> SetDataMixture:
        # Against the mixture as it will be once the accepted ones apply: two commands
        # can't together zero every weight.
        validate_mixture(projected_mixture(view), self.weights)
        return self

    def apply(self, run: Steering) -> str:
        data = run.frontend.data
        assert data is not None  # refused at submission otherwise (unsupported)
        data.reset(data.position, self.weights)
        return f"mixture {self.weights}"


def projected_mixture(view: RunView) -> dict[str, float] | None:
    """The trainer's mixture with the accepted, not yet applied mixture commands on top."""
    if view.mixture is None:
        return None
    mixture = dict(view.mixture)
    for cmd in view.pending_of(SetDataMixture):
        mixture.update(cmd.weights)  # type: ignore[attr-defined]
    return mixture
