"""The trainer's feed from the buffer actor: batches prefetched, so a step rarely waits."""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

import ray

from ray_interactive.core.mixture import validate_mixture
from ray_interactive.core.retry import call_with_retry
from ray_interactive.data.feeds import Batch, FeedBase
from ray_interactive.runtime.lifecycle import actor_restarting

log = logging.getLogger(__name__)


class RayFeed(FeedBase):
    """Prefetches from a buffer actor, keeping ``in_flight`` calls under way.

    A call costs the trainer about a millisecond (submission, object-store get), which is
    a fifth of a 5 ms step. So unless ``per_request`` fixes it, each call asks for as
    many batches as the trainer consumes in ``window_s`` (measured, 1 to 256): one call
    per ~50 ms of training, whatever the step time. The batches drawn, and so the run,
    are the same either way: the buffer samples them in one sequence.
    """

    def __init__(
        self,
        buffer: Any,
        batch_size: int,
        per_request: int | None,
        in_flight: int,
        position: dict[str, Any],
        window_s: float = 0.05,
        lane: int = 0,
    ) -> None:
        super().__init__(batch_size, position)
        self.buffer = buffer
        self.lane = lane  # the buffer keeps one sampler state per lane (a rank of a multi-worker run)
        self.fixed = per_request
        self.per_request = per_request or 1
        self.in_flight = in_flight
        self.window_s = window_s
        self._pending: collections.deque[Any] = collections.deque()
        self._new_stream(position)
        self._last_pop = 0.0
        self.restarts = 0  # times the buffer actor came back from a crash
        self._interval = 0.0  # EMA of seconds between batches handed out
        self._top_up()

    def _new_stream(self, position: dict[str, Any]) -> None:
        """Number requests afresh; the first one carries the position to start from. The
        buffer serves a stream's requests in order and drops older streams' late ones."""
        # Increasing even if the clock steps back (and past any stream the buffer has seen).
        self._stream = max(time.time_ns(), getattr(self, "_stream", 0) + 1, getattr(self, "_floor", 0))
        self._seq = 0
        self._carry: dict[str, Any] | None = position

    def _top_up(self) -> None:
        if self.fixed is None and self._interval > 0:
            self.per_request = max(1, min(256, round(self.window_s / self._interval)))
        while len(self._pending) < self.in_flight:
            position, self._carry = self._carry, None
            ref = self.buffer.next_batches.remote(
                self.batch_size, self.per_request, self._stream, self._seq, position, self.lane
            )
            self._pending.append(ref)
            self._seq += 1

    def _pop(self) -> Batch:
        now = time.monotonic()
        if self._last_pop:
            dt = now - self._last_pop
            self._interval = dt if self._interval == 0 else 0.8 * self._interval + 0.2 * dt
        self._last_pop = now
        return super()._pop()

    def next(self) -> Batch | None:
        """The next batch (waiting only if prefetching fell behind); None if the buffer
        has no data yet."""
        while not self._ready:
            try:
                chunk = ray.get(self._pending.popleft())
            except ray.exceptions.RayActorError:
                self._recover()
                continue
            self._top_up()
            if chunk is None:
                return None
            if isinstance(chunk, dict):  # stale: the buffer saw a newer stream (a clock step)
                self._floor = chunk["stale"] + 1
                self.reset(self.position)
                continue
            self._unpack(chunk)
        return self._pop()

    def _recover(self, timeout: float = 300.0) -> None:
        """The buffer actor died; once Ray has restarted it (it recovers its rows from
        disk), put its sampler back where the last batch handed out left it."""
        log.warning("data buffer unavailable; waiting for Ray to restart it")
        self._pending.clear()

        def back() -> None:
            ray.get(self.buffer.ready.remote(), timeout=10)
            self.reset(self.position)

        call_with_retry(back, "waiting for the data buffer to restart", deadline_s=timeout,
                        on=lambda e: actor_restarting(e) or isinstance(e, ray.exceptions.GetTimeoutError),
                        base_delay=0.2, max_delay=1.0, logger=log, level=logging.INFO)
        self.restarts += 1
        log.warning("data buffer back; continuing from batch %s", self.position.get("batches"))

    def reset(self, position: dict[str, Any], weights: dict[str, float] | None = None) -> None:
        """Drop prefetched batches and continue from ``position`` (optionally with new
        mixture weights: checked here, so a refused change leaves the feed as it was)."""
        if weights is not None:
            position = {**position, "weights": validate_mixture(position["weights"], weights)}
        self._ready.clear()
        self._pending.clear()
        self.position = position
        self._new_stream(position)
        self._top_up()
