"""The data buffer actor: an async shell around :class:`~ray_interactive.data.buffer.DataBuffer`.

Ingests are written at once and acknowledged after a shared fsync
(:class:`~ray_interactive.data.ordering.GroupCommit`), and the trainer's batch requests,
numbered, are served in order (:class:`~ray_interactive.data.ordering.Turns`). Ray restarts
it if its process dies; the constructor rebuilds every acknowledged row from disk.
"""

from __future__ import annotations

import collections
import logging
import os
import time
import warnings
from typing import Any

import ray

from ray_interactive.core.config import RunConfig, actor_name
from ray_interactive.core.messages import BufferStats
from ray_interactive.core.task import load_task
from ray_interactive.data.buffer import DataBuffer
from ray_interactive.data.ordering import GroupCommit, Turns

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class BufferActor:
    """Ray shell of :class:`~ray_interactive.data.buffer.DataBuffer`.

    An async actor: ingests are written at once and acknowledged after a shared fsync
    (:class:`GroupCommit`), and the trainer's batch requests, numbered, are served in
    order (:class:`Turns`). Everything else runs on the event loop between awaits, so
    the plain buffer is never entered by two calls at once.

    Ray restarts it if its process dies (``max_restarts``); the constructor then rebuilds
    every acknowledged row from the run's segments. Calls in flight at the crash fail
    (no automatic retry: the trainer restores its data position first, and ``ingest``
    retries are made safe by ``batch_id``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO)
        cfg = RunConfig.model_validate(config)
        task = load_task(cfg.task.target, cfg.task.kwargs)
        self._cfg = cfg
        self._b = DataBuffer(
            task.data_sources(),
            seed=cfg.seed,
            mixture=cfg.mixture,
            directory=cfg.resolved_run_dir / "buffer",
            config=cfg.buffer,
        )
        with warnings.catch_warnings():  # Ray's own property trips its actor_id deprecation warning
            warnings.simplefilter("ignore")
            self._restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self._controller: Any = None
        self._last_stats = 0.0
        # One sampler state and one order of requests per lane: each rank of a multi-worker
        # run draws its own stream (lane = its rank); a single trainer uses lane 0.
        self._turns: dict[int, Turns] = collections.defaultdict(Turns)
        self._lanes: dict[int, dict[str, Any]] = {}  # positions of the lanes not drawing now
        self._lane = 0
        self._commit = GroupCommit(self._b)

    def _report(self, force: bool = False) -> None:
        """Freshness figures to the controller, at most every ``stats_interval_s``
        (fire-and-forget, riding on calls the buffer gets anyway)."""
        now = time.monotonic()
        if not force and now - self._last_stats < self._cfg.buffer.stats_interval_s:
            return
        self._last_stats = now
        try:
            if self._controller is None:
                self._controller = ray.get_actor(actor_name(self._cfg.name, "controller"), namespace=self._cfg.namespace)
            self._controller.buffer_stats.remote(self._stats())
        except ValueError:  # no controller (a buffer used on its own)
            pass

    async def ingest(self, table: Any, source: str, batch_id: str | None = None) -> dict[str, Any]:
        group = self._cfg.buffer.fsync
        try:
            ack = self._b.ingest(table, source, batch_id, sync=not group)
        finally:
            self._report()
        if group:  # a duplicate waits too: its first copy may not be on disk yet
            self._commit.written += 1
            await self._commit.wait(self._commit.written)
        return ack

    async def next_batches(
        self,
        batch_size: int,
        count: int = 1,
        stream: int | None = None,
        seq: int = 0,
        position: dict[str, Any] | None = None,
        lane: int = 0,
    ) -> Any:
        """Draw batches; with ``stream``/``seq`` (the trainer's feed) requests are served in
        order and the first of a stream restores ``position`` first. A request of a
        superseded stream returns ``{"stale": current stream}``."""
        if stream is None:
            chunk = self._draw(lane, batch_size, count, position)
        else:
            turns = self._turns[lane]
            if not await turns.acquire(stream, seq):
                return {"stale": turns.stream}
            try:
                chunk = self._draw(lane, batch_size, count, position)
            finally:
                await turns.release(stream, seq)
        self._report()
        return chunk

    def _draw(self, lane: int, batch_size: int, count: int, position: dict[str, Any] | None) -> Any:
        if lane != self._lane:  # switch the sampler to this lane's state
            self._lanes[self._lane] = self._b.position()
            if position is None and lane in self._lanes:
                self._b.restore(self._lanes.pop(lane))
            self._lane = lane
        return self._b.next_batches(batch_size, count, position)

    async def position(self) -> dict[str, Any]:
        return self._b.position()

    async def initial_position(self, rank: int = 0, world: int = 1) -> dict[str, Any]:
        """The position a run (or rank ``rank`` of ``world``) starts drawing from; a
        trainer restarted before its first checkpoint begins here again."""
        return self._b.initial_position(rank, world)

    async def restore(self, position: dict[str, Any]) -> None:
        self._b.restore(position)

    async def source_spec(self, source: str) -> Any:
        return self._b.source_spec(source)

    async def mixture(self) -> dict[str, float]:
        return self._b.mixture()

    async def set_mixture(self, weights: dict[str, float]) -> dict[str, float]:
        return self._b.set_mixture(weights)

    async def sources(self) -> dict[str, Any]:
        return self._b.sources()

    def _stats(self) -> BufferStats:
        return self._b.stats().model_copy(update={"restarted": self._restarted})

    async def stats(self) -> dict[str, Any]:
        return self._stats().model_dump(mode="json")

    async def read(self, source: str, start: int = 0, stop: int | None = None, columns: list[str] | None = None) -> Any:
        return self._b.read(source, start, stop, columns)

    async def pid(self) -> int:
        return os.getpid()

    async def close(self) -> None:
        self._report(force=True)
        self._b.close()

    async def ready(self) -> bool:
        return True
