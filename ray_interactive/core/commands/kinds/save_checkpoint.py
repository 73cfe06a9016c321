"""``save_checkpoint``: write a checkpoint now."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator

from ray_interactive.core.commands.base import CommandBase, check_name

if TYPE_CHECKING:
    from ray_interactive.core.steering import Steering


class SaveCheckpoint(CommandBase):
    """Write a checkpoint now, optionally tagged."""

    kind: Literal["save_checkpoint"] = "save_checkpoint"
    tag: str | None = Field(default=None, description="a name to find it by (kept by the retention policy)")

    label: ClassVar[str] = "Save checkpoint"
    section: ClassVar[str] = "checkpoints"
    example: ClassVar[str] = "tag=before-lr-drop"
    for_agents: ClassVar[bool] = True

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v, "tag")

    def apply(self, run: Steering) -> str:
        return f"saved {run.checkpoints.save('command', self.tag)}"

    def repeat_on_recovery(self, outcome: str | None, ckpt_dir: Path) -> bool:
        # Its checkpoint still on disk: writing it again would only duplicate it.
        return not (ckpt_dir / (outcome or "").removeprefix("saved ")).is_dir()
