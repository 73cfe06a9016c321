"""When a run that says ``running`` is called ``stalled``: a policy on the run's own pace.

A fixed bound is wrong for most runs: two minutes is 24,000 steps of a 5 ms model and half a
step of a large one. By default (``stall_after_s`` None) the bound is ``STALL_STEPS`` of the
run's recent step time, kept between a floor (reports, a checkpoint or a short evaluation
must not look like a hang) and a ceiling (a hang is seen within minutes, whatever the pace);
while the loop says it is busy with longer work (an evaluation, a checkpoint) the ceiling
applies, and before the run has a pace the old fixed bound does.
"""

from __future__ import annotations

import collections
import statistics
import time

STALL_STEPS = 20  # this many steps' time without a step: stalled
STALL_FLOOR_S = 10.0
STALL_CEILING_S = 600.0
STALL_UNKNOWN_S = 120.0  # no pace measured yet (the first steps)


def stall_bound(step_time_s: float | None, busy: bool = False) -> float:
    """Seconds without a completed step after which a running run is stalled."""
    if busy:
        return STALL_CEILING_S
    if step_time_s is None:
        return STALL_UNKNOWN_S
    return min(max(STALL_STEPS * step_time_s, STALL_FLOOR_S), STALL_CEILING_S)


class StepClock:
    """The pace of a run as its reports show it: when its step last moved, and the median
    seconds a step took over the recent reports (each report may cover many steps)."""

    def __init__(self, window: int = 32) -> None:
        self.step = 0
        self.moved_at = time.monotonic()
        self._paces: collections.deque[float] = collections.deque(maxlen=window)
        self._running_since_move = False  # the pace is measured only across running time

    def seen(self, step: int, running: bool, now: float | None = None) -> None:
        """A report says the loop is at ``step`` (``running``: and was training)."""
        now = time.monotonic() if now is None else now
        if step != self.step:
            if running and self._running_since_move and step > self.step:
                self._paces.append((now - self.moved_at) / (step - self.step))
            self.step, self.moved_at = step, now
            self._running_since_move = running
        if not running:  # paused, waiting...: the clock starts again when it trains again
            self.moved_at = now
            self._running_since_move = False  # and this gap says nothing of the pace

    def step_time(self) -> float | None:
        """Median seconds a step takes (None until two reports have measured one)."""
        return statistics.median(self._paces) if len(self._paces) >= 2 else None

    def idle(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.moved_at
