"""Typed command records: what people, agents and scripts can ask a run to do.

Every command is data: a pydantic model per kind, joined in the discriminated union
:data:`Command`. A command carries who sent it and when; once submitted, the controller
wraps it in a :class:`CommandRecord` with a sequence number and a status that moves
``accepted -> applied | failed`` (or is ``rejected`` at submission with the reason).

Validation happens in two layers. The models here check everything that can be checked
without the run (types, finite numbers, names); :mod:`ray_interactive.core.validation` checks
the rest against the live optimizer, model, checkpoints and data sources.
"""

from __future__ import annotations

import json
import math
import re
import time
import typing
import uuid
from enum import Enum
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from ray_interactive.core.schedules import check_args as check_schedule_args

#: Names of branches, sources and tags: safe as file names and readable in a UI.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)
#: Checkpoint ids are ``<branch>@<step>`` (``.2``, ``.3`` on repeats): never a path.
CHECKPOINT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}@[0-9]{1,18}(\.[0-9]{1,9})?$"
#: Command ids: short, and safe in a URL, a log line and a file name.
COMMAND_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$"

#: Bounds on any payload before it is even parsed: how deep it nests, how many values it
#: holds, how long one string may be, how large JSON text may be.
MAX_DEPTH = 6
MAX_VALUES = 2000
MAX_STRING = 4000
MAX_TEXT_BYTES = 64 * 1024
#: The furthest a command may be pinned ahead (``at_step``) when the run has no max_steps.
MAX_AT_STEP = 10**12
#: Largest mixture weight (weights are relative; a bound keeps their sum finite).
MAX_WEIGHT = 1e6


class CommandSource(str, Enum):
    """Who issued a command."""

    UI = "ui"
    AGENT = "agent"
    API = "api"
    CLI = "cli"
    REPLAY = "replay"
    SYSTEM = "system"  # the run itself: a --duration stop, the training health guard


class CommandStatus(str, Enum):
    """Where a command is in its life."""

    REJECTED = "rejected"  # refused at submission; never reaches the trainer
    ACCEPTED = "accepted"  # validated and queued for the trainer
    APPLIED = "applied"  # took effect at ``applied_step``
    FAILED = "failed"  # accepted, but could not be applied (reason given)
    CANCELLED = "cancelled"  # accepted, then withdrawn by a ``cancel`` before it applied

    @property
    def is_final(self) -> bool:
        return self is not CommandStatus.ACCEPTED


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a valid name, else raise ``ValueError`` naming ``what``."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):  # fullmatch: "$" lets a "\n" through
        raise ValueError(
            f"{what} {_clip(str(value), 64)!r} is not a valid name: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


class _CommandBase(BaseModel):
    """Fields every command has."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=COMMAND_ID_PATTERN)
    source: CommandSource = CommandSource.API
    issued_at: float = Field(default_factory=time.time)
    #: Apply exactly when the trainer has completed this many optimizer steps (replay).
    at_step: int | None = Field(default=None, ge=0, le=MAX_AT_STEP)
    #: Free text the sender wants kept with the command (an agent's reasoning, say).
    comment: str | None = Field(default=None, max_length=2000)

    @field_validator("source", mode="before")
    @classmethod
    def _source_from_str(cls, v: Any) -> Any:
        # Strict mode refuses plain strings for enums; payloads from JSON carry strings.
        if isinstance(v, str):
            try:
                return CommandSource(v)
            except ValueError:
                allowed = ", ".join(s.value for s in CommandSource)
                raise ValueError(f"source must be one of {allowed}, not {v!r}") from None
        return v

    @field_validator("issued_at")
    @classmethod
    def _finite_time(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("issued_at must be a finite timestamp")
        return v


class UpdateOptimizer(_CommandBase):
    """Set hyperparameters of the live optimizer's param groups (all, or one named group).

    Keys must already exist in the param groups (``lr``, ``weight_decay``, ``betas``,
    ``eps``, ``momentum``, ...). A new ``lr`` rescales the running learning-rate schedule
    so that the very next optimizer step uses exactly that value.
    """

    kind: Literal["update_optimizer"] = "update_optimizer"
    params: dict[Annotated[str, Field(max_length=64)], Any] = Field(min_length=1, max_length=32)
    group: str | None = Field(default=None, min_length=1, max_length=64)


class SetLRSchedule(_CommandBase):
    """Switch, from this step on, to a learning-rate schedule over ``steps`` steps.

    ``constant`` keeps the current lr. ``linear``/``cosine`` decay from the current lr to
    ``min_lr_ratio`` times it over ``steps`` steps, then hold. ``step`` multiplies the lr by
    ``gamma`` every ``steps`` steps. An optional linear warmup precedes any of them.
    """

    kind: Literal["set_lr_schedule"] = "set_lr_schedule"
    schedule: Literal["constant", "linear", "cosine", "step"]
    steps: int | None = Field(default=None, ge=1, le=100_000_000)
    min_lr_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)
    warmup_steps: int = Field(default=0, ge=0, le=100_000_000)

    @model_validator(mode="after")
    def _steps_needed(self) -> SetLRSchedule:
        check_schedule_args(self.schedule, self.steps)
        return self


class SetGradClip(_CommandBase):
    """Clip the global gradient norm to ``max_norm``; ``None`` turns clipping off."""

    kind: Literal["set_grad_clip"] = "set_grad_clip"
    max_norm: float | None = Field(gt=0.0, le=1e6)


class SetGradAccumulation(_CommandBase):
    """Use ``steps`` micro-batches per optimizer step."""

    kind: Literal["set_grad_accumulation"] = "set_grad_accumulation"
    steps: int = Field(ge=1, le=4096)


class Pause(_CommandBase):
    """Stop stepping after the current step; other commands still apply while paused."""

    kind: Literal["pause"] = "pause"


class Resume(_CommandBase):
    """Continue stepping after a pause."""

    kind: Literal["resume"] = "resume"


class Stop(_CommandBase):
    """Finish the current step, write a final checkpoint and end the run cleanly."""

    kind: Literal["stop"] = "stop"


class SaveCheckpoint(_CommandBase):
    """Write a checkpoint now, optionally tagged."""

    kind: Literal["save_checkpoint"] = "save_checkpoint"
    tag: str | None = None

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v, "tag")


class LoadCheckpoint(_CommandBase):
    """Restore a checkpoint and continue training from it on a new branch."""

    kind: Literal["load_checkpoint"] = "load_checkpoint"
    checkpoint_id: str = Field(max_length=160)
    branch: str | None = None

    @field_validator("checkpoint_id")
    @classmethod
    def _checkpoint_id(cls, v: str) -> str:
        if not re.fullmatch(CHECKPOINT_ID_PATTERN, v):
            raise ValueError(f"{_clip(v)!r} is not a checkpoint id (<branch>@<step>, as listed by checkpoints())")
        return v

    @field_validator("branch")
    @classmethod
    def _branch(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v, "branch")


class Evaluate(_CommandBase):
    """Run the task's evaluation now."""

    kind: Literal["evaluate"] = "evaluate"


class SetDataMixture(_CommandBase):
    """Set sampling weights of data sources (sources not named keep their weight)."""

    kind: Literal["set_data_mixture"] = "set_data_mixture"
    weights: dict[str, float] = Field(min_length=1, max_length=256)

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        for name, w in v.items():
            check_name(name, "source")
            if not math.isfinite(w) or w < 0 or w > MAX_WEIGHT:
                raise ValueError(f"weight of source {name!r} must be a finite number >= 0 and <= {MAX_WEIGHT:g}, not {w}")
        return v


class UpdateModule(_CommandBase):
    """Operate on one module of the model, named by its path (``transformer.h.0.attn``).

    ``op`` is one of ``reset_parameters``, ``set_attribute`` (a whitelisted attribute such
    as dropout ``p``), ``freeze`` or ``unfreeze``. Nothing else can be called or set.
    """

    kind: Literal["update_module"] = "update_module"
    module: str = Field(max_length=512, pattern=r"^[\w.\-]+$")
    op: Literal["reset_parameters", "set_attribute", "freeze", "unfreeze"]
    attribute: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    value: float | int | bool | None = None

    @model_validator(mode="after")
    def _attribute_pair(self) -> UpdateModule:
        if self.op == "set_attribute":
            if self.attribute is None or self.value is None:
                raise ValueError("set_attribute needs both 'attribute' and 'value'")
        elif self.attribute is not None or self.value is not None:
            raise ValueError(f"{self.op} takes no 'attribute' or 'value'")
        return self


class PublishWeights(_CommandBase):
    """Publish the current weights as a new version for deployed models (subscribers)."""

    kind: Literal["publish_weights"] = "publish_weights"


class Cancel(_CommandBase):
    """Withdraw an accepted command that has not been applied yet (one waiting for its
    ``at_step``, say), named by its id or its sequence number. It is cancelled at the
    next step boundary; if it was applied first, the cancel fails and says so."""

    kind: Literal["cancel"] = "cancel"
    command_id: str | None = Field(default=None, pattern=COMMAND_ID_PATTERN)
    seq: int | None = Field(default=None, ge=1, le=2**62)

    @model_validator(mode="after")
    def _one_target(self) -> Cancel:
        if self.command_id is None and self.seq is None:
            raise ValueError("cancel needs the command's 'command_id' or its 'seq'")
        return self


Command = Annotated[
    Union[
        UpdateOptimizer,
        SetLRSchedule,
        SetGradClip,
        SetGradAccumulation,
        Pause,
        Resume,
        Stop,
        SaveCheckpoint,
        LoadCheckpoint,
        Evaluate,
        SetDataMixture,
        UpdateModule,
        PublishWeights,
        Cancel,
    ],
    Field(discriminator="kind"),
]
"""Any command: a discriminated union on ``kind``."""

COMMAND_ADAPTER: TypeAdapter[Command] = TypeAdapter(Command)
COMMAND_KINDS: tuple[str, ...] = tuple(
    m.model_fields["kind"].default for m in typing.get_args(typing.get_args(Command)[0])
)


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
        return f"#{self.seq} {self.kind} [{self.status.value}{where}]{why}"


def describe_validation_error(err: ValidationError, limit: int = 5) -> str:
    """Turn a pydantic error into one readable sentence per problem (the first ``limit``;
    user-given keys and values are clipped, so a message never echoes a large input)."""
    parts = []
    errors = err.errors(include_url=False, include_input=False)
    for e in errors[:limit]:
        loc = ".".join(_clip(str(x), 40) for x in e["loc"] if not _is_union_tag(x))
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown field {loc!r}")
            continue
        if e["type"] == "missing":
            parts.append(f"missing field {loc!r}")
            continue
        if e["type"] == "string_pattern_mismatch":
            parts.append(f"{loc}: {_PATTERN_HINTS.get(e['loc'][-1], 'contains characters that are not allowed')}")
            continue
        msg = _clip(e["msg"].removeprefix("Value error, "), 300)
        parts.append(f"{loc}: {msg}" if loc else msg)
    if len(errors) > limit:
        parts.append(f"and {len(errors) - limit} more problem(s)")
    return "; ".join(parts)


_PATTERN_HINTS = {
    "id": "use 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit",
    "command_id": "use 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit",
    "module": "a module path is names and indices joined by '.' (transformer.h.0.attn)",
    "attribute": "an attribute is a Python identifier of at most 64 characters",
}


def _clip(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, saying so."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


def check_payload_shape(payload: Any) -> None:
    """Refuse, before any parsing, a payload nested deeper than ``MAX_DEPTH``, holding more
    than ``MAX_VALUES`` values or a string over ``MAX_STRING`` characters, or a string (or
    key) that is not valid Unicode. Iterative: a hostile nesting cannot exhaust the stack."""
    stack: list[tuple[Any, int]] = [(payload, 0)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ValueError(f"the command holds more than {MAX_VALUES} values")
        if isinstance(value, str):
            _check_text(value, "a string")
        elif isinstance(value, dict):
            if depth >= MAX_DEPTH:
                raise ValueError(f"the command is nested more than {MAX_DEPTH} levels deep")
            for k, v in value.items():
                if isinstance(k, str):
                    _check_text(k, "a key")
                stack.append((v, depth + 1))
        elif isinstance(value, (list, tuple)):
            if depth >= MAX_DEPTH:
                raise ValueError(f"the command is nested more than {MAX_DEPTH} levels deep")
            stack.extend((v, depth + 1) for v in value)


def _check_text(text: str, what: str) -> None:
    if len(text) > MAX_STRING:
        raise ValueError(f"{what} in the command has {len(text)} characters; the limit is {MAX_STRING}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{what} in the command is not valid Unicode (a lone surrogate at position {e.start}: {_clip(repr(text), 40)})"
        ) from None


def loggable(payload: Any, limit: int = 2000) -> Any:
    """A small, JSON-safe copy of an arbitrary (possibly hostile) payload, for the log and
    the history: at most 4 levels and 32 items per level, strings clipped to 200
    characters, invalid Unicode escaped; if it is still over ``limit`` characters of
    JSON, a clipped text of it. Never raises, never recurses deeper than 4 levels."""
    clean = _small_copy(payload, 0)
    try:
        text = json.dumps(clean)
    except (TypeError, ValueError):
        return "(unprintable payload)"
    return clean if len(text) <= limit else text[:limit] + "...(truncated)"


def _small_copy(value: Any, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else _clip(str(value), 40)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (str, bytes)):
        text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
        return _clip(text.encode("utf-8", "backslashreplace").decode("utf-8"), 200)
    if depth >= 4:
        return "...(nested deeper)"
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(_small_copy(k, 4))[:64]: _small_copy(v, depth + 1) for k, v in items[:32]}
        if len(items) > 32:
            out["..."] = f"{len(items) - 32} more"
        return out
    if isinstance(value, (list, tuple)):
        return [_small_copy(v, depth + 1) for v in value[:32]] + ([f"...{len(value) - 32} more"] if len(value) > 32 else [])
    return f"<{type(value).__name__}>"


def _is_union_tag(x: Any) -> bool:
    return isinstance(x, str) and x in COMMAND_KINDS


def parse_command(payload: Any) -> Command:
    """Validate a payload (a dict, JSON text or a command model) into a :data:`Command`.

    Raises ``ValueError`` with a readable message when it is not a valid command.
    """
    try:
        if isinstance(payload, _CommandBase):  # built in Python: its strings still go to the log
            check_payload_shape(payload.model_dump())
            return payload  # type: ignore[return-value]
        if isinstance(payload, (str, bytes)):
            if len(payload) > MAX_TEXT_BYTES:
                raise ValueError(f"the command is {len(payload)} bytes of text; the limit is {MAX_TEXT_BYTES}")
            try:
                payload = json.loads(payload)
            except (ValueError, RecursionError) as e:
                raise ValueError(f"the command is not valid JSON ({_clip(str(e), 120)})") from None
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
                f"unknown command kind {_clip(str(kind), 64)!r}; known kinds: {', '.join(COMMAND_KINDS)}"
            )
        return COMMAND_ADAPTER.validate_python(payload)
    except ValidationError as err:
        raise ValueError(describe_validation_error(err)) from None
