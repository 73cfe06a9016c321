"""The controller's way to its trackers: a bounded queue and one writer thread.

The controller calls :meth:`TrackerFeed.put` under its lock for every metric report,
command outcome, branch and rewind; that only appends to a queue. One thread opens the
sinks and writes to them, so a slow tracker (a remote MLflow server, W&B starting) never
holds up the controller, let alone the training step. A tracker behind gets the reports
queued for a branch in one write; if the queue is full even so, events are dropped and
counted rather than block; :meth:`close` drains it.
"""

from __future__ import annotations

import importlib
import logging
import queue
import threading
import time
from collections.abc import Callable

from ray_interactive.core.trackers.base import Event, Rows, RunInfo, Sink
from ray_interactive.core.trackers.registry import TRACKERS

log = logging.getLogger(__name__)

_STOP = object()
#: How long the writer waits after an event before writing it (see ``_run``).
LINGER_S = 0.01


def open_sink(name: str, info: RunInfo) -> Sink:
    """Import tracker ``name``'s sink and open it for the run."""
    module, cls = TRACKERS[name].sink.split(":")
    sink: Sink = getattr(importlib.import_module(module), cls)(info)
    return sink


class TrackerFeed:
    """Events to the run's tracker sinks, written by one background thread.

    The sinks are opened in that thread (opening a tracker may take seconds) by
    ``opener`` (default :func:`open_sink`). A sink that raises is logged (its first error
    with the traceback) and kept: the next event may well work (a server back up).
    :meth:`take_errors` hands the controller what went wrong, once, for the run's history."""

    def __init__(self, names: list[str], info: RunInfo, flush_s: float = 5.0, max_queue: int = 10_000,
                 opener: Callable[[str, RunInfo], Sink] = open_sink) -> None:
        self.names, self.info = list(names), info
        self._opener = opener
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self.flush_s = flush_s
        self.sinks: list[Sink] = []
        self.dropped = 0
        self.written = 0
        self._errors: list[str] = []
        self._failed: set[str] = set()  # sinks whose first error has been logged
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"trackers-{info.run}", daemon=True)
        self._thread.start()

    # -- the controller's side -----------------------------------------------------------
    def put(self, event: Event) -> bool:
        """Queue ``event`` without waiting; False (and counted) if the queue is full or closed."""
        if self._closed:
            return False
        try:
            self._queue.put_nowait(event)
            return True
        except queue.Full:
            with self._lock:
                self.dropped += 1
                if self.dropped == 1:
                    self._errors.append(f"the trackers fall behind: events are dropped (the queue holds "
                                        f"{self._queue.maxsize}); the run's own metrics are complete")
                    log.warning(self._errors[-1])
            return False

    def take_errors(self) -> list[str]:
        """What went wrong since the last call (each tracker's first error, dropped events)."""
        with self._lock:
            errors, self._errors = self._errors, []
        return errors

    def close(self, timeout: float = 60.0) -> None:
        """Write what is queued, close every sink, and end the thread (at most ``timeout`` s)."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        while True:  # the stop marker must get in, even behind a full queue
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("the trackers did not finish writing within %.0f s", timeout)
        if self.dropped:
            log.warning("%d tracker event(s) were dropped: the trackers fell behind", self.dropped)

    # -- the writer thread ---------------------------------------------------------------
    def _error(self, message: str) -> None:
        with self._lock:
            self._errors.append(message)

    def _open(self) -> None:
        for name in self.names:
            try:
                self.sinks.append(self._opener(name, self.info))
            except Exception as e:  # noqa: BLE001 - one tracker failing leaves the others
                log.exception("could not open the %s tracker", name)
                self._error(f"the {name} tracker could not be opened ({type(e).__name__}: {e}); "
                            "the run goes on without it"[:1000])

    def _run(self) -> None:
        self._open()
        last_flush = time.monotonic()
        dirty = False
        held: object = None  # taken from the queue while merging, not handled yet
        while True:
            if held is not None:
                event, held = held, None
            else:
                try:
                    event = self._queue.get(timeout=self.flush_s)
                except queue.Empty:
                    event = None
            if event is _STOP:
                break
            if event is not None:
                # Let the call that queued it return first (the controller's lock is held and we
                # share its GIL); reports arriving meanwhile are written along with it.
                time.sleep(LINGER_S)
                count = 1
                while isinstance(event, Rows):  # behind: one write for the queued reports of a branch
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if not (isinstance(nxt, Rows) and nxt.branch == event.branch):
                        held = nxt
                        break
                    event, count = Rows(event.branch, [*event.rows, *nxt.rows]), count + 1
                for sink in self.sinks:
                    self._call(sink, "handle", event)
                self.written += count
                dirty = True
            if dirty and (event is None or time.monotonic() - last_flush >= self.flush_s):
                for sink in self.sinks:
                    self._call(sink, "flush")
                last_flush, dirty = time.monotonic(), False
        for sink in self.sinks:
            self._call(sink, "close")

    def _call(self, sink: Sink, method: str, *args: object) -> None:
        try:
            getattr(sink, method)(*args)
        except Exception as e:  # noqa: BLE001 - a tracker's failure is not the run's
            if sink.name not in self._failed:
                self._failed.add(sink.name)
                log.exception("the %s tracker failed (%s); later failures are counted, not logged", sink.name, method)
                self._error(f"the {sink.name} tracker failed: {type(e).__name__}: {e}"[:1000])
