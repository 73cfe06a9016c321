"""What crosses actor boundaries, typed: the trainer's status, its snapshot, run events and
the buffer's figures. (Commands and their outcomes are :mod:`~ray_interactive.core.commands`'
``Command`` / ``CommandRecord``; weight versions are
:class:`~ray_interactive.serve.weights.WeightVersion`.)

Producers build these models and send ``model_dump(mode="json")`` (plain data: cheap for
Ray to ship, readable in the logs); the controller validates what it receives with the
same model. A field renamed or dropped on one side fails there - in tests - instead of a
missing key in the UI at run time. Unknown fields are errors, not silently carried.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ray_interactive.core.state import RunStatus

__all__ = ["BufferStats", "RunEvent", "RunStatus", "Snapshot", "SourceStats", "TrainerStatus"]


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
    frontend: str = "trainer"  # "trainer", "hf", "loop"


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


class RunEvent(_Message):
    """Something the run did on its own (a health pause, a failed publish), for the history;
    ``submit``: commands it asks the controller to send on its behalf (source ``system``)."""

    kind: str
    message: str
    step: int
    branch: str
    time: float
    failed: bool = False
    submit: list[dict[str, Any]] = Field(default_factory=list)


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
