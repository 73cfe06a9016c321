"""``rollback_version``: the canary goes back to the stable version; its version is never offered again."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from ray_interactive.core.commands.base import CommandBase

if TYPE_CHECKING:
    from ray_interactive.core.rollout import Rollout


class RollbackVersion(CommandBase):
    """Roll the canary back: it serves the stable version again and its version is never
    offered again (the judge sends it when the canary fails a guard; a person may too)."""

    kind: Literal["rollback_version"] = "rollback_version"
    version: int | None = Field(default=None, ge=1, description="the canary's version (a check that it still is)")
    figures: dict[str, Any] | None = Field(default=None, description="the evaluation behind the decision")

    label: ClassVar[str] = "Roll the canary back"
    section: ClassVar[str] = "deployment"
    in_controller: ClassVar[bool] = True

    def for_rollout(self, rollout: Rollout) -> RollbackVersion:
        if self.version is None and rollout.canary is not None:
            return self.model_copy(update={"version": rollout.canary})
        return self

    def apply_rollout(self, rollout: Rollout, kept: set[int]) -> str:
        return rollout.rollback(self.version, self.source.value, self.figures)
