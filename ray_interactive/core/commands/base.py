"""What every command kind shares: the fields of a command, its checks, and the registry.

A command kind is one class (one file in :mod:`ray_interactive.core.commands.kinds`) that
holds everything about it:

* its **model** - the pydantic fields, their types and bounds (checked without the run);
* its **check at submission** - :meth:`CommandBase.check` against the controller's
  :class:`RunView` (the live optimizer, model, checkpoints and data sources as the trainer
  last described them), and :meth:`CommandBase.accepted` for what accepting it reserves;
* its **effect** - :meth:`CommandBase.apply` on the steering core, at a step boundary;
* what the **UI, CLI and agents** need to offer it - ``label``, ``section``, ``example``,
  ``for_agents`` and ``spread`` (class attributes); the arguments come from the fields
  (:func:`kind_info`).

Defining the class registers it (:data:`KINDS`); the union of all kinds, the records and
parsing are in :mod:`ray_interactive.core.commands.record`.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ray_interactive.core.plain import clip, field_path, one_of, shown
from ray_interactive.core.plain import describe_validation_error as describe_pydantic_error

if TYPE_CHECKING:
    from pathlib import Path

    from ray_interactive.core.rollout import Rollout
    from ray_interactive.core.steering import Steering

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
#: Fields every command has; the rest are a kind's own arguments.
COMMON_FIELDS = frozenset({"id", "kind", "source", "issued_at", "at_step", "comment"})


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
            f"{what} {clip(str(value), 64)!r} is not a valid name: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


@dataclass
class RunView:
    """What the controller knows of a run, enough to check commands at submission."""

    status: str = "starting"
    step: int = 0
    stopping: bool = False
    groups: list[dict[str, Any]] | None = None  # describe_optimizer(); None until the trainer is up
    modules: dict[str, dict[str, Any]] | None = None  # describe_modules()
    has_eval: bool = False
    checkpoints: set[str] = field(default_factory=set)
    branches: set[str] = field(default_factory=set)  # existing and reserved by accepted loads
    mixture: dict[str, float] | None = None  # source -> weight the trainer last reported; None if unknown
    max_steps: int | None = None
    trainable: int | None = None  # trainable parameters (elements) the trainer last reported
    unsupported: dict[str, str] = field(default_factory=dict)  # kinds the run's front-end cannot apply -> why
    #: Accepted commands not applied yet, by number (a kind's check may count them in).
    pending: dict[int, CommandBase] = field(default_factory=dict)
    #: Every record the controller keeps, by key (a cancel looks its target up here).
    records: Mapping[str, Any] = field(default_factory=dict)

    def pending_of(self, kind: type[CommandBase]) -> list[CommandBase]:
        """Accepted, not yet applied commands of ``kind``, in order."""
        return [self.pending[s] for s in sorted(self.pending) if isinstance(self.pending[s], kind)]


class CommandBase(BaseModel):
    """Fields every command has, and the hooks every kind may fill in."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=COMMAND_ID_PATTERN)
    source: CommandSource = CommandSource.API
    issued_at: float = Field(default_factory=time.time)
    #: Apply exactly when the trainer has completed this many optimizer steps (replay).
    at_step: int | None = Field(default=None, ge=0, le=MAX_AT_STEP)
    #: Free text the sender wants kept with the command (an agent's reasoning, say).
    comment: str | None = Field(default=None, max_length=2000)

    # -- what the UI, CLI and agents need to offer the kind ------------------------------
    #: A button's text.
    label: ClassVar[str] = ""
    #: Where a UI puts it: "optimizer", "run", "checkpoints", "data", "model".
    section: ClassVar[str] = "run"
    #: Arguments as a person types them (``key=value``, what the CLI's ``send`` takes).
    example: ClassVar[str] = ""
    #: Among the kinds an agent may send unless its guardrails say otherwise.
    for_agents: ClassVar[bool] = False
    #: A dict field that bare ``key=value`` arguments go into (``update_optimizer lr=1e-4``).
    spread: ClassVar[str | None] = None

    # -- how the steering core treats it ---------------------------------------------------
    #: Touches nothing the step's gradients depend on: also applied just before an optimizer
    #: step, so the very step being computed uses it (lr, optimizer settings).
    before_step: ClassVar[bool] = False
    #: Moves the step counter (a load): pinned commands after it count steps on its branch.
    moves_step: ClassVar[bool] = False
    #: Checked against the trainer's description of optimizer and model: refused until it has one.
    needs_description: ClassVar[bool] = False
    #: Applied by the controller when it is accepted (the deployed replicas' rollout), never
    #: sent to the training loop: :meth:`apply_rollout` instead of :meth:`apply`.
    in_controller: ClassVar[bool] = False

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Register each concrete kind (a class with a ``kind`` field) by its name."""
        super().__pydantic_init_subclass__(**kwargs)
        kind_field = cls.model_fields.get("kind")
        if kind_field is None:
            return
        kind = kind_field.default
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"{cls.__name__}.kind needs a default: the kind's name")
        known = KINDS.get(kind)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise TypeError(f"command kind {kind!r} is defined twice ({known.__name__}, {cls.__name__})")
        KINDS[kind] = cls

    @field_validator("source", mode="before")
    @classmethod
    def _source_from_str(cls, v: Any) -> CommandSource:
        # Strict mode refuses plain strings for enums; payloads from JSON carry strings.
        return one_of(CommandSource, v, "source")

    @field_validator("issued_at")
    @classmethod
    def _finite_time(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("issued_at must be a finite timestamp")
        return v

    if TYPE_CHECKING:
        kind: str

    # -- the kind's hooks ----------------------------------------------------------------
    def check(self, view: RunView) -> CommandBase:
        """Raise ``ValueError`` with a readable reason if this command cannot be accepted by
        the run ``view`` describes; return it as accepted (a kind may fill in fields)."""
        return self

    def accepted(self, view: RunView) -> None:
        """The command was accepted (and logged): reserve what it will take (a branch name)."""

    def apply(self, run: Steering) -> str:
        """Apply the command to the run now; return what it did (raise ``ValueError`` if it cannot)."""
        raise NotImplementedError(f"{type(self).__name__} has no effect")

    def for_rollout(self, rollout: Rollout) -> CommandBase:
        """The command as logged, with what it acts on filled in (the canary's version)."""
        return self

    def apply_rollout(self, rollout: Rollout, kept: set[int]) -> str:
        """An ``in_controller`` kind's effect on the deployed replicas' rollout (``kept``: the
        weight versions the run keeps); ``ValueError`` if it cannot."""
        raise NotImplementedError(f"{type(self).__name__} is applied by the training loop")

    def repeat_on_recovery(self, outcome: str | None, ckpt_dir: Path) -> bool:
        """Whether a restarted trainer applies it again (after the checkpoint it restarts
        from); ``outcome`` is the message it was applied with."""
        return True

    def arguments(self) -> dict[str, Any]:
        """The kind's own arguments, as JSON values."""
        return self.model_dump(mode="json", exclude=set(COMMON_FIELDS))


#: Every command kind, by name (filled in as the kind modules are imported).
KINDS: dict[str, type[CommandBase]] = {}


def gate(cmd: CommandBase, view: RunView) -> None:
    """The checks every kind goes through before its own: a run that takes commands, a
    front-end that can apply it, an ``at_step`` that can still come, a trainer that has
    described itself when the kind needs it."""
    if view.status in ("stopped", "failed"):
        raise ValueError(f"the run has {view.status}; it takes no more commands")
    if view.stopping:
        raise ValueError("the run is stopping; it takes no more commands")
    why = view.unsupported.get(cmd.kind)
    if why is not None:
        raise ValueError(why)
    if cmd.at_step is not None and cmd.in_controller:
        raise ValueError(f"{cmd.kind} acts on the deployed replicas at once; it takes no at_step")
    if cmd.at_step is not None:
        if cmd.at_step < view.step:
            raise ValueError(f"at_step {cmd.at_step} has already passed (the run is at step {view.step})")
        if view.max_steps is not None and cmd.at_step > view.max_steps:
            raise ValueError(f"at_step {cmd.at_step} is past the run's max_steps ({view.max_steps}): it would never apply")
    if cmd.needs_description and (view.groups is None or view.modules is None):
        raise ValueError("the trainer is still starting; send the command again in a moment")


# -- what the UI and the CLI show of a kind ----------------------------------------------
@dataclass(frozen=True)
class ArgInfo:
    """One argument of a kind, as a form or ``--help`` shows it."""

    name: str
    type: str
    required: bool
    default: Any
    description: str
    bounds: str  # "> 0, <= 1e+06", "one of constant, linear" ...


@dataclass(frozen=True)
class KindInfo:
    """What a UI, the CLI and agents show of a command kind."""

    kind: str
    label: str
    summary: str  # the docstring's first sentence
    help: str
    section: str
    example: str
    for_agents: bool
    spread: str | None
    args: tuple[ArgInfo, ...]

    def usage(self) -> str:
        """``kind key=value ...``: how the CLI's ``send`` takes it."""
        return f"{self.kind} {self.example}".strip()


def kind_info(kind: str | type[CommandBase]) -> KindInfo:
    """The description of a kind, from its class attributes, docstring and fields."""
    cls = KINDS[kind] if isinstance(kind, str) else kind
    schema = cls.model_json_schema()
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    args = []
    for name, f in cls.model_fields.items():
        if name in COMMON_FIELDS:
            continue
        prop = props.get(name, {})
        args.append(ArgInfo(
            name=name,
            type=_type_text(prop),
            required=name in required,
            default=None if f.is_required() else f.get_default(call_default_factory=True),
            description=f.description or "",
            bounds=_bounds_text(prop),
        ))
    doc = " ".join((cls.__doc__ or "").split()).replace("``", "`")
    name = cls.model_fields["kind"].default
    return KindInfo(
        kind=name, label=cls.label or name.replace("_", " "), summary=doc.split(". ")[0].rstrip(".") if doc else name,
        help=doc, section=cls.section, example=cls.example, for_agents=cls.for_agents, spread=cls.spread, args=tuple(args),
    )


def _type_text(prop: dict[str, Any]) -> str:
    options = prop.get("anyOf") or [prop]
    names = []
    for o in options:
        if "enum" in o:
            names.append("|".join(map(str, o["enum"])))
        elif "const" in o:
            names.append(str(o["const"]))
        else:
            names.append({"number": "float", "integer": "int", "string": "text", "boolean": "bool", "object": "dict",
                          "array": "list", "null": "null"}.get(o.get("type", ""), o.get("type", "any")))
    return " or ".join(dict.fromkeys(names))


def _bounds_text(prop: dict[str, Any]) -> str:
    options = prop.get("anyOf") or [prop]
    marks = {"exclusiveMinimum": ">", "minimum": ">=", "exclusiveMaximum": "<", "maximum": "<=",
             "minLength": "length >=", "maxLength": "length <="}
    parts = [f"{sign} {o[key]:g}" if isinstance(o[key], float) else f"{sign} {o[key]}"
             for o in options for key, sign in marks.items() if key in o]
    return ", ".join(parts)


# -- refusing hostile payloads before parsing --------------------------------------------
def describe_validation_error(err: ValidationError, limit: int = 5) -> str:
    """A pydantic error about a command as one plain sentence per problem (the first
    ``limit``); see :func:`ray_interactive.core.plain.describe_validation_error`."""
    return describe_pydantic_error(err, limit, hints=_PATTERN_HINTS, drop=_is_union_tag)


_PATTERN_HINTS = {
    "id": "use 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit",
    "command_id": "use 1-64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit",
    "module": "a module path is names and indices joined by '.' (transformer.h.0.attn)",
    "attribute": "an attribute is a Python identifier of at most 64 characters",
}


def _is_union_tag(x: Any) -> bool:
    return isinstance(x, str) and x in KINDS


def check_payload_shape(payload: Any) -> None:
    """Refuse, before any parsing, a payload nested deeper than ``MAX_DEPTH``, holding more
    than ``MAX_VALUES`` values, a string over ``MAX_STRING`` characters, a string (or key)
    that is not valid Unicode, a value that is not JSON data (a function, a lock: Ray could
    not even send it) or a number too large for a float. Iterative: a hostile nesting
    cannot exhaust the stack."""
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(payload, 0, ())]
    count = 0
    while stack:
        value, depth, path = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ValueError(f"the command holds more than {MAX_VALUES} values")
        if isinstance(value, str):
            _check_text(value, "a string")
        elif isinstance(value, (bool, float)) or value is None:
            continue
        elif isinstance(value, int):
            if abs(value) > sys.float_info.max:  # float(value) would raise OverflowError in a check
                raise ValueError(f"{_where(path)} is too large: {shown(value)} (numbers go up to about 1e308)")
        elif isinstance(value, dict):
            if depth >= MAX_DEPTH:
                raise ValueError(f"the command is nested more than {MAX_DEPTH} levels deep")
            for k, v in value.items():
                if isinstance(k, str):
                    _check_text(k, "a key")
                stack.append((v, depth + 1, (*path, k)))
        elif isinstance(value, (list, tuple)):
            if depth >= MAX_DEPTH:
                raise ValueError(f"the command is nested more than {MAX_DEPTH} levels deep")
            stack.extend((v, depth + 1, (*path, i)) for i, v in enumerate(value))
        elif not path:
            raise ValueError(f"a command must be a JSON object with a 'kind', not {shown(value)}")
        else:
            raise ValueError(
                f"{_where(path)} is {shown(value)}: a command holds only text, numbers, true/false, null, lists and objects"
            )


def _where(path: tuple[Any, ...]) -> str:
    return field_path(path) or "the command"


def _check_text(text: str, what: str) -> None:
    if len(text) > MAX_STRING:
        raise ValueError(f"{what} in the command has {len(text)} characters; the limit is {MAX_STRING}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{what} in the command is not valid Unicode (a lone surrogate at position {e.start}: {clip(repr(text), 40)})"
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
        return value if abs(value) < 2**63 else shown(value)  # str() of a huge int raises
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (str, bytes)):
        text = value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
        return clip(text.encode("utf-8", "backslashreplace").decode("utf-8"), 200)
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
