"""Typed command records: what people, agents and scripts can ask a run to do.

Every command is data: a pydantic model per kind, joined in the discriminated union
:data:`Command`. A command carries who sent it and when; once submitted, the controller
wraps it in a :class:`CommandRecord` with a sequence number and a status that moves
``accepted -> applied | failed`` (or is ``rejected`` at submission with the reason).

Validation happens in two layers. The models here check everything that can be checked
without the run (types, finite numbers, names); :mod:`ray_interactive.validation` checks
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

from ray_interactive.schedules import check_args as check_schedule_args

#: Names of branches, sources and tags: safe as file names and readable in a UI.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)


class CommandSource(str, Enum):
    """Who issued a command."""

    UI = "ui"
    AGENT = "agent"
    API = "api"
    CLI = "cli"
    REPLAY = "replay"


class CommandStatus(str, Enum):
    """Where a command is in its life."""

    REJECTED = "rejected"  # refused at submission; never reaches the trainer
    ACCEPTED = "accepted"  # validated and queued for the trainer
    APPLIED = "applied"  # took effect at ``applied_step``
    FAILED = "failed"  # accepted, but could not be applied (reason given)

    @property
    def is_final(self) -> bool:
        return self is not CommandStatus.ACCEPTED


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a valid name, else raise ``ValueError`` naming ``what``."""
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(
            f"{what} {value!r} is not a valid name: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


class _CommandBase(BaseModel):
    """Fields every command has."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)
    source: CommandSource = CommandSource.API
    issued_at: float = Field(default_factory=time.time)
    #: Apply exactly when the trainer has completed this many optimizer steps (replay).
    at_step: int | None = Field(default=None, ge=0)
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
    params: dict[str, Any] = Field(min_length=1, max_length=32)
    group: str | None = None


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
    checkpoint_id: str = Field(min_length=1, max_length=128)
    branch: str | None = None

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
            if not math.isfinite(w) or w < 0:
                raise ValueError(f"weight of source {name!r} must be a finite number >= 0, not {w}")
        return v


class UpdateModule(_CommandBase):
    """Operate on one module of the model, named by its path (``transformer.h.0.attn``).

    ``op`` is one of ``reset_parameters``, ``set_attribute`` (a whitelisted attribute such
    as dropout ``p``), ``freeze`` or ``unfreeze``. Nothing else can be called or set.
    """

    kind: Literal["update_module"] = "update_module"
    module: str = Field(max_length=512)
    op: Literal["reset_parameters", "set_attribute", "freeze", "unfreeze"]
    attribute: str | None = Field(default=None, max_length=64)
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

    @property
    def id(self) -> str | None:
        if self.command is not None:
            return self.command.id
        if isinstance(self.payload, dict) and isinstance(self.payload.get("id"), str):
            return self.payload["id"]
        return None

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


def describe_validation_error(err: ValidationError) -> str:
    """Turn a pydantic error into one readable sentence per problem."""
    parts = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(x) for x in e["loc"] if not _is_union_tag(x))
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown field {loc!r}")
            continue
        if e["type"] == "missing":
            parts.append(f"missing field {loc!r}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _is_union_tag(x: Any) -> bool:
    return isinstance(x, str) and x in COMMAND_KINDS


def parse_command(payload: Any) -> Command:
    """Validate a payload (a dict, JSON text or a command model) into a :data:`Command`.

    Raises ``ValueError`` with a readable message when it is not a valid command.
    """
    if isinstance(payload, _CommandBase):
        return payload  # type: ignore[return-value]
    try:
        if isinstance(payload, (str, bytes)):
            try:
                payload = json.loads(payload)
            except (ValueError, RecursionError) as e:
                raise ValueError(f"the command is not valid JSON ({e})") from None
        if not isinstance(payload, dict):
            raise ValueError(
                f"a command must be a JSON object with a 'kind', not {type(payload).__name__}"
            )
        kind = payload.get("kind")
        if kind is None:
            raise ValueError(f"the command has no 'kind'; known kinds: {', '.join(COMMAND_KINDS)}")
        if kind not in COMMAND_KINDS:
            raise ValueError(
                f"unknown command kind {str(kind)[:64]!r}; known kinds: {', '.join(COMMAND_KINDS)}"
            )
        return COMMAND_ADAPTER.validate_python(payload)
    except ValidationError as err:
        raise ValueError(describe_validation_error(err)) from None
