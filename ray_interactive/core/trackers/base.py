"""What a tracker sink is told, and the base class every sink extends.

A run is a tree of branches (a ``load_checkpoint`` forks one from a checkpoint of its
parent); each tracker shows it the way it can: a TensorBoard run (log dir) per branch, an
MLflow nested run per branch under one run, a W&B run per branch in one group. A
*rewind* (a resumed or restarted trainer computing a branch again from a checkpoint) must
never show the same step twice in one tracker run: each sink handles it its own way.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray_interactive.core.commands import CommandRecord

#: One row of metrics: ``(step, wall time, {name: value})`` (as :data:`~ray_interactive.core.messages.MetricRow`).
Row = tuple[int, float, dict[str, float]]


@dataclass(frozen=True)
class Rows:
    """Metric rows of one branch."""

    branch: str
    rows: list[Row]


@dataclass(frozen=True)
class Note:
    """A command (or something the run did on its own) as text, at a step of a branch."""

    branch: str
    step: int
    time: float
    name: str  # short and file-safe: "0003-update_optimizer"
    text: str


@dataclass(frozen=True)
class Fork:
    """Branch ``name`` continues ``parent`` from its step ``step`` (checkpoint ``checkpoint``)."""

    name: str
    parent: str
    step: int
    checkpoint: str


@dataclass(frozen=True)
class Rewind:
    """``branch`` is computed again from ``step`` on: what was reported at or after it is redone."""

    branch: str
    step: int


Event = Rows | Note | Fork | Rewind


@dataclass(frozen=True)
class RunInfo:
    """What every sink is opened with."""

    run: str  # the run's name
    run_dir: Path
    resumed: bool  # the run existed before (a resumed run, a restarted controller): take up its tracker runs
    mlflow_tracking_uri: str | None = None


class Sink:
    """One tracker. The feed's one writer thread calls these in event order; each may be
    slow (files, a server) but never blocks training. Default: ignore the event."""

    name = "sink"

    def metrics(self, event: Rows) -> None:
        """Log metric rows of a branch."""

    def note(self, event: Note) -> None:
        """Log a command as text."""

    def fork(self, event: Fork) -> None:
        """A branch was created."""

    def rewind(self, event: Rewind) -> None:
        """A branch is computed again from a step."""

    def flush(self) -> None:
        """Make what was logged visible (called when the feed is idle)."""

    def close(self) -> None:
        """Flush and release (the run ended or its controller closed)."""

    def handle(self, event: Event) -> None:
        """Dispatch ``event`` to its method."""
        if isinstance(event, Rows):
            self.metrics(event)
        elif isinstance(event, Note):
            self.note(event)
        elif isinstance(event, Fork):
            self.fork(event)
        elif isinstance(event, Rewind):
            self.rewind(event)


def note_of(record: CommandRecord, branch: str, step: int) -> Note:
    """A command record in its final state as one line of text, e.g.
    ``#3 update_optimizer (ui) {"params": {"lr": 0.001}} -> applied at step 10: ... // why``."""
    row = record.row()
    kind = row["kind"] or "command"
    given = {k: v for k, v in row["args"].items() if v is not None} if isinstance(row["args"], dict) else row["args"]
    args = json.dumps(given, default=str, sort_keys=True) if given else ""
    seq = f"#{row['seq']} " if row["seq"] is not None else ""
    where = f" at step {row['applied_step']}" if row["applied_step"] is not None else ""
    text = f"{seq}{kind} ({row['source'] or '?'}) {args}".rstrip() + f" -> {row['status']}{where}"
    if row["message"]:
        text += f": {row['message']}"
    if row["comment"]:
        text += f" // {row['comment']}"
    tag = f"{row['seq']:04d}" if row["seq"] is not None else "sys"
    name = _UNSAFE.sub("_", f"{tag}-{kind}")[:80]
    at = row["applied_at"] or row["received_at"]
    return Note(branch=record.branch or branch, step=row["applied_step"] if row["applied_step"] is not None else step,
                time=float(at), name=name, text=text[:4000])


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def load_state(path: Path) -> dict[str, Any]:
    """A sink's small state file (run ids), or {} (a new run, or one it cannot read)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def save_state(path: Path, doc: dict[str, Any]) -> None:
    """Write a sink's state file atomically (a restarted controller reads it back)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
