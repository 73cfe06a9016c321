"""``cancel``: withdraw an accepted command that has not been applied yet."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from ray_interactive.core.commands.base import COMMAND_ID_PATTERN, CommandBase, CommandStatus, RunView

if TYPE_CHECKING:
    from ray_interactive.core.steering import Steering


class Cancel(CommandBase):
    """Withdraw an accepted command that has not been applied yet (one waiting for its
    ``at_step``, say), named by its id or its sequence number. It is cancelled at the
    next step boundary; if it was applied first, the cancel fails and says so."""

    kind: Literal["cancel"] = "cancel"
    command_id: str | None = Field(default=None, pattern=COMMAND_ID_PATTERN, description="the command's id")
    seq: int | None = Field(default=None, ge=1, le=2**62, description="or its number (#12)")

    label: ClassVar[str] = "Cancel it"
    example: ClassVar[str] = "seq=12"

    @model_validator(mode="after")
    def _one_target(self) -> Cancel:
        if self.command_id is None and self.seq is None:
            raise ValueError("cancel needs the command's 'command_id' or its 'seq'")
        return self

    def check(self, view: RunView) -> Cancel:
        target = resolve_cancel(list(view.records.values()), self.command_id, self.seq)
        return self.model_copy(update={"command_id": target.id, "seq": target.seq})

    def apply(self, run: Steering) -> str:
        assert self.seq is not None  # the controller names the target by number
        target = run.inbox.remove(self.seq)
        if target is None:
            raise ValueError(f"#{self.seq} is no longer pending: it was applied or cancelled first")
        message = f"cancelled at step {run.state.step} by command {self.id}"
        run.withdrawn(target.model_copy(
            update={"status": CommandStatus.CANCELLED, "message": message, "applied_at": time.time()}))
        return f"cancelled #{self.seq} {target.kind}"


def resolve_cancel(records: list[Any], command_id: str | None, seq: int | None) -> Any:
    """The accepted, not yet applied command a ``cancel`` names, or ``ValueError`` why not."""
    what = f"#{seq}" if seq is not None else f"id {command_id!r}"
    target = next(
        (r for r in records if r.command is not None and (r.seq == seq if seq is not None else r.id == command_id) and r.seq),
        None,
    )
    if target is None:
        raise ValueError(f"no accepted command with {what}")
    if command_id is not None and seq is not None and (target.id != command_id):
        raise ValueError(f"#{seq} has id {target.id!r}, not {command_id!r}")
    if target.status is not CommandStatus.ACCEPTED:
        step = f" at step {target.applied_step}" if target.applied_step is not None else ""
        raise ValueError(f"#{target.seq} {target.kind} is no longer pending: it was {target.status.value}{step}")
    if target.kind == "cancel":
        raise ValueError("a cancel cannot be cancelled")
    return target
