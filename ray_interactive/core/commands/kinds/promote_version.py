"""``promote_version``: the canary's weights version becomes stable on every replica."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from ray_interactive.core.commands.base import CommandBase

if TYPE_CHECKING:
    from ray_interactive.core.rollout import Rollout


class PromoteVersion(CommandBase):
    """Promote the canary: every deployed replica serves its version from now on (the
    guarded rollout's judge sends it when the canary holds its guards; a person may too)."""

    kind: Literal["promote_version"] = "promote_version"
    version: int | None = Field(default=None, ge=1, description="the canary's version (a check that it still is)")
    figures: dict[str, Any] | None = Field(default=None, description="the evaluation behind the decision")

    label: ClassVar[str] = "Promote the canary"
    section: ClassVar[str] = "deployment"
    in_controller: ClassVar[bool] = True

    def for_rollout(self, rollout: Rollout) -> PromoteVersion:
        if self.version is None and rollout.canary is not None:
            return self.model_copy(update={"version": rollout.canary})
        return self

    def apply_rollout(self, rollout: Rollout, kept: set[int]) -> str:
        return rollout.promote(self.version, self.source.value, self.figures)
