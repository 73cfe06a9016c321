"""How a training loop tells the controller what it does, without waiting for an answer.

:class:`Reporter` sends typed messages (:mod:`ray_interactive.core.messages`) to a
:class:`ControllerPort` - the controller actor's handle under Ray (see
``ray_interactive.runtime``), the plain :class:`~ray_interactive.core.controller.Controller`
in-process - and queues events to ride along with the next report. :class:`Telemetry`
keeps the metric rows between reports and the loop's status.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ray_interactive.core.checkpoints import CheckpointInfo
from ray_interactive.core.commands import CommandRecord
from ray_interactive.core.messages import (
    BranchCreated,
    BranchRewound,
    CheckpointSaved,
    CheckpointsRemoved,
    MetricRow,
    Outcomes,
    Progress,
    RunEvent,
    Snapshot,
    TrainerEvent,
    TrainerStatus,
)
from ray_interactive.core.state import RunStatus

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ray_interactive.core.config import RunConfig
    from ray_interactive.core.state import TrainState

#: A metric row before its values are read: tensors stay on their device until a report.
Row = tuple[int, float, dict[str, Any]]


class ControllerPort(Protocol):
    """Where a training loop's reports go. Each call may return a reply to wait for
    (an ``ObjectRef`` under Ray) or None."""

    def progress(self, report: Progress) -> Any: ...

    def outcomes(self, report: Outcomes) -> Any: ...

    def describe(self, snapshot: Snapshot) -> Any: ...


class Reporter:
    """Sends reports to a :class:`ControllerPort` (None: a rank that does not report)
    without waiting; ``wait(replies)`` is used by :meth:`sync`.

    Events are queued and ride along with the next progress or outcomes report, so the
    controller learns of a checkpoint no later than of the status or outcome that
    mentions it; reports are numbered, so an older report's news of a checkpoint never
    undoes a newer one's (separate calls to a threaded actor may be reordered).
    """

    def __init__(self, port: ControllerPort | None, wait: Callable[[list[Any]], Any] | None = None,
                 incarnation: int = 0) -> None:
        self.port = port
        self._wait = wait
        #: Which start of the trainer this is: the controller ignores reports of an older one
        #: (a worker of a lost group still running for a moment must not speak for the run).
        self.incarnation = incarnation
        self._recent: collections.deque[Any] = collections.deque(maxlen=256)
        self._events: list[TrainerEvent] = []
        self.name = uuid.uuid4().hex[:12]  # its reports are numbered (see above)
        self._seq = 0

    def _number(self) -> dict[str, Any]:
        self._seq += 1
        return {"reporter": self.name, "seq": self._seq}

    def _sent(self, reply: Any) -> None:
        self._recent.append(reply)

    def _take_events(self) -> list[TrainerEvent]:
        events, self._events = self._events, []
        return events

    def _queue(self, event: TrainerEvent) -> None:
        if self.port is not None:  # a rank that does not report keeps none (rank 0 tells the run)
            self._events.append(event)

    def progress(self, branch: str, status: TrainerStatus, rows: list[MetricRow]) -> None:
        if self.port is not None:
            self._sent(self.port.progress(Progress(branch=branch, status=status, rows=rows, events=self._take_events(),
                                                   incarnation=self.incarnation, **self._number())))

    def outcomes(self, records: list[CommandRecord], snapshot: Snapshot | None = None,
                 status: TrainerStatus | None = None) -> None:
        """Outcomes and the state they left, in one message: whoever sees "applied" sees the
        new settings, status and checkpoints too."""
        if self.port is not None:
            self._sent(self.port.outcomes(Outcomes(records=records, snapshot=snapshot, status=status,
                                                   events=self._take_events(), incarnation=self.incarnation,
                                                   **self._number())))

    def snapshot(self, snapshot: Snapshot) -> None:
        if self.port is not None:
            self._sent(self.port.describe(snapshot.model_copy(update={"incarnation": self.incarnation})))

    def checkpoint(self, info: CheckpointInfo) -> None:
        self._queue(CheckpointSaved(info=info))

    def branch(self, name: str, parent: str, checkpoint: str, step: int) -> None:
        self._queue(BranchCreated(name=name, parent=parent, checkpoint=checkpoint, step=step))

    def rewind(self, branch: str, step: int) -> None:
        self._queue(BranchRewound(branch=branch, step=step))

    def checkpoints_removed(self, ids: list[str]) -> None:
        self._queue(CheckpointsRemoved(ids=ids))

    def event(self, kind: str, message: str, step: int, branch: str, failed: bool = False,
              submit: list[dict[str, Any]] | None = None) -> None:
        """Something the run did on its own, for the command history (and ``submit``: the
        commands it asks the controller to send on its behalf, source ``system``)."""
        self._queue(RunEvent(kind=kind, message=message, step=step, branch=branch, failed=failed, submit=submit or []))

    def sync(self) -> None:
        """Wait until the recent reports have reached the controller (at the end of a run)."""
        if self._wait is not None:
            self._wait([r for r in self._recent if r is not None])
        self._recent.clear()

    def settle(self) -> bool:
        """:meth:`sync` in the middle of a run: a controller that cannot answer is logged,
        never raised into the training step. Whether every report was answered."""
        try:
            self.sync()
            return True
        except Exception:  # noqa: BLE001 - the controller restarting or gone: training goes on
            log.warning("the controller did not answer the run's reports", exc_info=True)
            return False


class Telemetry:
    """The loop's metric rows between reports, its throughput and its status."""

    def __init__(self, config: RunConfig, state: TrainState, reporter: Reporter, frontend_name: Callable[[], str]) -> None:
        self.config = config
        self.state = state
        self.reporter = reporter
        self._frontend_name = frontend_name
        self.rows: list[Row] = []
        self.awaiting: dict[str, Any] | None = None  # a row (and those after it) held back until it is complete
        self.on_report: list[Callable[[], None]] = []  # front-end additions to a report's newest row
        self.throughput = 0.0
        self.busy: str | None = None  # longer work than a step under way (see busy_with)
        #: A checkpoint's step: its metrics are reported as soon as its row can go, and the
        #: loop waits until the controller has them on disk (a resume reads them back; a
        #: group of workers that dies a few steps later must not take them along).
        self.durable_through: int | None = None
        self._last_report = 0.0

    def add(self, step: int, values: dict[str, Any]) -> dict[str, Any]:
        """Queue a row of ``values`` at ``step``; returns it (a front-end may add to it)."""
        self.rows.append((step, time.time(), values))
        return values

    def step_done(self, samples: int, seconds: float) -> None:
        self.throughput = samples / seconds if self.throughput == 0 else 0.9 * self.throughput + 0.1 * samples / seconds

    def status(self, message: str | None = None) -> TrainerStatus:
        s = self.state
        if message is None and s.ended is None:
            message = s.message
        return TrainerStatus(
            status=s.status,
            step=s.step,
            branch=s.branch,
            # a rate is of steps under way: a paused, waiting or stopped loop trains nothing
            samples_per_s=round(self.throughput, 3) if s.status == RunStatus.RUNNING else 0.0,
            samples_seen=s.samples_seen,
            last_checkpoint=s.last_checkpoint,
            message=message,
            time=time.time(),
            frontend=self._frontend_name(),
            busy=self.busy,
        )

    @contextlib.contextmanager
    def busy_with(self, what: str) -> Iterator[None]:
        """Work longer than a step (an evaluation, a checkpoint): said in a report before it
        starts, so the controller does not take the quiet for a hang (core/stalls.py)."""
        outer, self.busy = self.busy, what
        self.report(force=True)
        try:
            yield
        finally:
            self.busy = outer

    def report(self, force: bool = False, message: str | None = None) -> None:
        """Send the rows and the status, at most every ``metrics_interval_s`` unless ``force``."""
        now = time.monotonic()
        durable = self._checkpoint_rows_ready()
        if not (force or durable) and now - self._last_report < self.config.metrics_interval_s:
            return
        self._last_report = now
        for add in self.on_report:
            add()
        cut = len(self.rows)  # a row still waiting for a value (many ranks: the mean loss) holds back
        if self.awaiting is not None:
            cut = next((i for i, (_, _, r) in enumerate(self.rows) if r is self.awaiting), cut)
        rows, self.rows = self.rows[:cut], self.rows[cut:]
        if durable:
            self.durable_through = None
        if self.reporter.port is None:  # a rank that does not report (rank 0 speaks for the run)
            return
        self.reporter.progress(self.state.branch, self.status(message), rows_to_floats(rows))
        if durable:
            self.reporter.settle()

    def _checkpoint_rows_ready(self) -> bool:
        """A checkpoint's rows are all complete (many ranks: its step's mean loss came)."""
        through = self.durable_through
        if through is None:
            return False
        if self.awaiting is None:
            return True
        held = next((step for step, _, r in self.rows if r is self.awaiting), None)
        return held is None or held > through


def rows_to_floats(rows: list[Row]) -> list[MetricRow]:
    """Metric rows with plain floats. All tensors are moved in one go: on a GPU each
    ``.item()`` is a sync, and there are a few per step."""
    by_device: dict[torch.device, list[torch.Tensor]] = collections.defaultdict(list)
    for _, _, r in rows:
        for v in r.values():
            if isinstance(v, torch.Tensor):
                by_device[v.device].append(v)
    values = {
        dev: iter(torch.stack([t.detach().float().reshape(()) for t in ts]).tolist()) for dev, ts in by_device.items()
    }
    out = []
    for step, t, r in rows:
        clean: dict[str, float] = {}
        for k, v in r.items():
            if isinstance(v, torch.Tensor):
                clean[k] = next(values[v.device])
            else:
                try:
                    clean[k] = float(v)
                except (TypeError, ValueError):
                    clean[k] = math.nan
        out.append((step, t, clean))
    return out
