"""What crosses actor boundaries, typed: the models themselves travel (Ray pickles them),
and the controller keeps them as they are.

* a training loop tells the controller where it is (:class:`Progress`), what its
  commands did (:class:`Outcomes`) and what it is (:class:`Snapshot`); both reports carry
  the :data:`TrainerEvent` s since the last one (checkpoints written, branches made, what
  the run did on its own), so the controller learns of a checkpoint no later than of the
  status that mentions it;
* the controller answers a loop's long poll for commands with a :class:`Delivery`;
* the data buffer sends its figures as :class:`BufferStats`.

(Commands and their outcomes are :mod:`~ray_interactive.core.commands`' ``Command`` /
``CommandRecord``; weight versions are :class:`~ray_interactive.core.weights.WeightVersion`.)
A field renamed or dropped on one side fails where the model is built - in tests - instead
of as a missing key in the UI at run time. Unknown fields are errors, not silently carried.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from ray_interactive.core.checkpoints import CheckpointInfo
from ray_interactive.core.commands import CommandRecord
from ray_interactive.core.state import RunStatus

__all__ = [
    "BranchCreated", "BranchRewound", "BufferStats", "CheckpointSaved", "CheckpointsRemoved", "Delivery",
    "MetricRow", "Outcomes", "Progress", "ReplicaOrders", "ReplicaReport", "RunEvent", "RunStatus", "Snapshot",
    "SourceStats", "TrainerEvent", "TrainerStatus",
]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainerStatus(_Message):
    """Where the training loop is: every progress report and command outcome carries one."""

    status: RunStatus
    step: int = Field(ge=0)
    branch: str
    samples_per_s: float = 0.0
    samples_seen: int = 0
    last_checkpoint: str | None = None
    message: str | None = None
    time: float
    frontend: str = "trainer"  # "trainer", "hf", "loop", "ddp"
    busy: str | None = None  # longer work than a step under way ("evaluating", ...): not a stall


class Snapshot(_Message):
    """What the controller needs to validate commands and UIs show as current settings."""

    groups: list[dict[str, Any]]  # hparams.describe_optimizer()
    modules: dict[str, dict[str, Any]]  # modules.describe_modules()
    trainable: int
    has_eval: bool
    step: int
    branch: str
    schedule: dict[str, Any]
    grad_clip: float | None
    grad_accumulation: int
    paused: bool
    mixture: dict[str, float]  # source -> weight batches are drawn with now ({}: the loop reads its own data)
    frontend: str
    unsupported: dict[str, str] = Field(default_factory=dict)  # command kind -> why this front-end cannot apply it
    incarnation: int = 0


# -- events: what a loop did, riding along with its next report --------------------------
class CheckpointSaved(_Message):
    type: Literal["checkpoint_saved"] = "checkpoint_saved"
    info: CheckpointInfo


class CheckpointsRemoved(_Message):
    """The retention policy deleted these checkpoints."""

    type: Literal["checkpoints_removed"] = "checkpoints_removed"
    ids: list[str]


class BranchCreated(_Message):
    """A load started a branch: ``name`` continues ``parent`` from ``checkpoint`` (at ``step``)."""

    type: Literal["branch_created"] = "branch_created"
    name: str
    parent: str
    checkpoint: str
    step: int


class BranchRewound(_Message):
    """A restarted trainer recomputes ``branch`` from ``step``: metrics past it are redone."""

    type: Literal["branch_rewound"] = "branch_rewound"
    branch: str
    step: int


class RunEvent(_Message):
    """Something the run did on its own (a health pause, a failed publish), for the history;
    ``submit``: commands it asks the controller to send on its behalf (source ``system``)."""

    type: Literal["run_event"] = "run_event"
    kind: str
    message: str
    step: int
    branch: str
    time: float = Field(default_factory=time.time)
    failed: bool = False
    submit: list[dict[str, Any]] = Field(default_factory=list)


TrainerEvent = Annotated[
    Union[CheckpointSaved, CheckpointsRemoved, BranchCreated, BranchRewound, RunEvent], Field(discriminator="type")
]
"""Any event a training loop reports."""

#: One row of metrics: ``(step, wall time, {name: value})``.
MetricRow = tuple[int, float, dict[str, float]]


class Progress(_Message):
    """A loop's periodic report: its status, the metric rows since the last report (of
    ``branch``) and its events."""

    branch: str
    status: TrainerStatus
    rows: list[MetricRow] = Field(default_factory=list)
    events: list[TrainerEvent] = Field(default_factory=list)
    incarnation: int = 0  # which start of the trainer sent it (each recovery starts a new one)
    reporter: str = ""  # who numbered it (``seq``): an older report's news of a checkpoint does not undo a newer one's
    seq: int = 0  # 0: not numbered


class Outcomes(_Message):
    """What a loop's commands did, and the state they left (settings, status, events), in
    one message: whoever sees "applied" sees the new settings and checkpoints too."""

    records: list[CommandRecord]
    snapshot: Snapshot | None = None
    status: TrainerStatus | None = None
    events: list[TrainerEvent] = Field(default_factory=list)
    incarnation: int = 0
    reporter: str = ""
    seq: int = 0


class Delivery(_Message):
    """The controller's answer to a loop's poll: the commands for it, and whether it should
    describe itself again (a restarted controller does not know its settings)."""

    records: list[CommandRecord] = Field(default_factory=list)
    describe: bool = False


# -- the data buffer ---------------------------------------------------------------------
class SourceStats(_Message):
    rows: int
    bytes: int
    memory_bytes: int
    memory_rows: int
    ingest_rows_per_s: float
    ingest_bytes_per_s: float
    rejected: int
    live: bool
    storage_error: str | None = None


class BufferStats(_Message):
    """The data buffer's figures, sent to the controller every ``stats_interval_s``."""

    time: float
    sources: dict[str, SourceStats]
    memory_bytes: int
    rejected: int
    rejections: list[dict[str, Any]]
    restarted: bool = False
    shards: list[dict[str, Any]] = Field(default_factory=list)  # the other shards' merge progress (primary only)


class ReplicaReport(_Message):
    """A deployed replica of the run's model, as it reports itself every few seconds and
    after each weight swap."""

    name: str
    version: int  # the weights version it serves (0: its own, nothing published loaded)
    pid: int
    host: str
    served: int = 0  # requests answered so far
    logged_rows: int = 0  # interaction rows acknowledged by the buffer
    pending_rows: int = 0  # logged, not yet acknowledged
    time: float = Field(default_factory=time.time)


class ReplicaOrders(_Message):
    """The controller's answer to a report: which version the replica is to serve."""

    follow: bool = True  # load each newest published version
    version: int | None = None  # else this one (0: the replica's own weights)
    canary: bool = False  # it serves a version being judged
