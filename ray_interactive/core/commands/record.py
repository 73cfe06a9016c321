"""The union of every kind, the record the controller keeps of a command, and parsing."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ray_interactive.core.commands import kinds as _kinds  # noqa: F401 - registers every kind
from ray_interactive.core.commands.base import (
    KINDS,
    MAX_DEPTH,
    MAX_TEXT_BYTES,
    CommandBase,
    CommandSource,
    CommandStatus,
    check_payload_shape,
    clip,
    describe_validation_error,
)

if TYPE_CHECKING:
    Command = CommandBase
else:
    Command = Annotated[Union[tuple(KINDS[k] for k in sorted(KINDS))], Field(discriminator="kind")]
"""Any command: a discriminated union on ``kind`` of every registered kind."""

COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)
#: The names of every kind, sorted.
COMMAND_KINDS: tuple[str, ...] = tuple(sorted(KINDS))


class CommandRecord(BaseModel):
    """A command as the controller keeps it: numbered, with its status and outcome."""

    model_config = ConfigDict(extra="forbid")

    command: Command | None  # None when the payload itself could not be parsed
    payload: Any = None  # the raw payload of an unparseable submission, for the log
    seq: int | None = None  # order of application; only accepted commands are numbered
    status: CommandStatus
    message: str | None = None  # why it was rejected or failed; what it did when applied
    received_at: float = Field(default_factory=time.time)
    applied_at: float | None = None
    applied_step: int | None = None  # completed optimizer steps when it took effect
    branch: str | None = None  # branch it was applied on
    #: Set on entries the run made on its own (the health guard pausing it, say): not a
    #: command anyone sent, never numbered; ``payload`` holds its kind.
    event: str | None = None

    @property
    def id(self) -> str | None:
        if self.command is not None:
            return self.command.id
        if isinstance(self.payload, dict) and isinstance(self.payload.get("id"), str):
            return self.payload["id"]
        return None

    @property
    def source(self) -> str | None:
        if self.command is not None:
            return self.command.source.value
        return CommandSource.SYSTEM.value if self.event else None

    @property
    def kind(self) -> str | None:
        if self.command is not None:
            return self.command.kind
        if isinstance(self.payload, dict) and isinstance(self.payload.get("kind"), str):
            return str(self.payload["kind"])[:64]
        return None

    def summary(self) -> str:
        """One line for logs and tables."""
        where = f" at step {self.applied_step}" if self.applied_step is not None else ""
        why = f": {self.message}" if self.message else ""
        number = f"#{self.seq} " if self.seq is not None else ""  # the controller's own (a rollout) have none
        return f"{number}{self.kind} [{self.status.value}{where}]{why}"

    def row(self) -> dict[str, Any]:
        """A flat, JSON-safe view for tables and agents."""
        cmd = self.command
        return {
            "id": self.id,
            "seq": self.seq,
            "kind": self.kind,
            "source": self.source,
            "args": cmd.arguments() if cmd is not None else ({} if self.event else self.payload),
            "status": self.status.value,
            "message": self.message,
            "issued_at": cmd.issued_at if cmd is not None else None,
            "received_at": self.received_at,
            "applied_at": self.applied_at,
            "applied_step": self.applied_step,
            "branch": self.branch,
            "at_step": cmd.at_step if cmd is not None else None,
            "comment": cmd.comment if cmd is not None else None,
        }


def parse_command(payload: Any) -> Command:
    """Validate a payload (a dict, JSON text or a command model) into a :data:`Command`.

    Raises ``ValueError`` with a readable message when it is not a valid command.
    """
    try:
        if isinstance(payload, CommandBase):  # built in Python: its strings still go to the log
            check_payload_shape(payload.model_dump())
            return payload
        if isinstance(payload, (str, bytes)):
            if len(payload) > MAX_TEXT_BYTES:
                raise ValueError(f"the command is {len(payload)} bytes of text; the limit is {MAX_TEXT_BYTES}")
            try:
                payload = json.loads(payload)
            except json.JSONDecodeError as e:  # "Expecting ',' delimiter: line 1 column 17 (char 16)"
                raise ValueError(f"the command is not valid JSON ({clip(str(e), 120)})") from None
            except RecursionError:
                raise ValueError(f"the command is nested more than {MAX_DEPTH} levels deep") from None
            except ValueError:  # Python's own words say to call sys.set_int_max_str_digits()
                raise ValueError("the command is not valid JSON: a number in it has more than 4300 digits") from None
        check_payload_shape(payload)
        if not isinstance(payload, dict):
            raise ValueError(
                f"a command must be a JSON object with a 'kind', not {type(payload).__name__}"
            )
        kind = payload.get("kind")
        if kind is None:
            raise ValueError(f"the command has no 'kind'; known kinds: {', '.join(COMMAND_KINDS)}")
        if kind not in COMMAND_KINDS:
            raise ValueError(
                f"unknown command kind {clip(str(kind), 64)!r}; known kinds: {', '.join(COMMAND_KINDS)}"
            )
        return COMMAND_ADAPTER.validate_python(payload)
    except ValidationError as err:
        raise ValueError(describe_validation_error(err)) from None
