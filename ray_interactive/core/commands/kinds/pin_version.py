"""``pin_version``: every deployed replica serves one weights version, by hand."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from ray_interactive.core.commands.base import CommandBase

if TYPE_CHECKING:
    from ray_interactive.core.rollout import Rollout


class PinVersion(CommandBase):
    """Hold every deployed replica on ``version`` (0: the replicas' own weights); the
    automatic rollout waits. Without a version: unpin, and the rollout (or following the
    newest version) goes on."""

    kind: Literal["pin_version"] = "pin_version"
    version: int | None = Field(default=None, ge=0, description="the version to serve; none: unpin")

    label: ClassVar[str] = "Pin the served version"
    section: ClassVar[str] = "deployment"
    example: ClassVar[str] = "version=3"
    in_controller: ClassVar[bool] = True

    def apply_rollout(self, rollout: Rollout, kept: set[int]) -> str:
        return rollout.pin(self.version, self.source.value, kept)
