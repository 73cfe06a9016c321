"""The data buffer actor: an async shell around :class:`~ray_interactive.data.buffer.DataBuffer`.

Ingests are written at once and acknowledged after a shared fsync
(:class:`~ray_interactive.data.ordering.GroupCommit`), and the trainer's batch requests,
numbered, are served in order (:class:`~ray_interactive.data.ordering.Turns`). Ray restarts
it if its process dies; the constructor rebuilds every acknowledged row from disk.

With ``buffer_shards`` > 1 the same class runs every shard (:mod:`ray_interactive.data.shards`):
shard 0, the primary, as above, plus a task that pulls the other shards' acknowledged rows
into its own order; shard k > 0 holds only the live sources and takes ingests.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
import warnings
from typing import Any

import ray

from ray_interactive.core.config import RunConfig, actor_name, shard_actor_name
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

    def __init__(self, config: dict[str, Any], shard: int = 0) -> None:
        logging.basicConfig(level=logging.INFO)
        cfg = RunConfig.model_validate(config)
        task = load_task(cfg.task.target, cfg.task.kwargs)
        self._cfg = cfg
        self._shard = shard
        sources = task.data_sources()
        if shard:  # another shard: the live sources only, stored in a directory of its own
            sources = [s for s in sources if not s.is_static]
        self._b = DataBuffer(
            sources,
            seed=cfg.seed,
            mixture=None if shard else cfg.mixture,
            directory=cfg.resolved_run_dir / "buffer" / (f"shard-{shard}" if shard else ""),
            config=cfg.buffer,
        )
        # Rows of each live source known durable (what the primary may copy from a shard).
        self._durable = {name: info["rows"] for name, info in self._b.sources().items() if info["live"]}
        # The primary: how far it has copied each other shard's rows, and how that went.
        self._cursors = self._b.shard_cursors() if not shard else {}
        self._shard_handles: dict[int, Any] = {}
        self._shard_state: dict[int, dict[str, Any]] = {}
        self._puller: asyncio.Task[None] | None = None
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
        if self._shard:  # the primary's figures stand for the run
            return
        self._start_pulling()
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
        # Every row up to this one is on disk now (writes of a source are in row order).
        self._durable[source] = max(self._durable.get(source, 0), ack["last"] + 1)
        return ack

    # -- shards --------------------------------------------------------------------------
    async def pull(self, source: str, start: int, max_bytes: int = 64 << 20) -> Any:
        """Durable rows of ``source`` from ``start`` on, with their ingest times (the
        primary's call to another shard)."""
        return self._b.pull(source, start, self._durable.get(source, 0), max_bytes)

    async def shard(self) -> int:
        return self._shard

    async def shard_count(self) -> int:
        return self._cfg.buffer_shards

    def _start_pulling(self) -> None:
        if self._shard == 0 and self._cfg.buffer_shards > 1 and self._puller is None:
            self._puller = asyncio.get_running_loop().create_task(self._pull_forever())

    async def _pull_forever(self) -> None:
        while True:
            try:
                await self.pull_shards()
            except Exception:  # noqa: BLE001 - logged; the next round tries again
                log.exception("merging the buffer shards' rows failed")
            await asyncio.sleep(self._cfg.buffer.pull_interval_s)

    async def pull_shards(self) -> int:
        """Copy every other shard's new durable rows here (fsync'ed once for the round);
        returns how many. A shard that does not answer (restarting, its node lost) is
        tried again next round: its rows wait on its disk."""
        copied = 0
        live = list(self._durable)
        for k in range(1, self._cfg.buffer_shards):
            state = self._shard_state.setdefault(k, {"shard": k, "copied_rows": 0, "error": None, "pulled_at": None})
            try:
                handle = self._shard_handles.get(k)
                if handle is None:
                    handle = self._shard_handles[k] = ray.get_actor(
                        shard_actor_name(self._cfg.name, k), namespace=self._cfg.namespace)
                for source in live:
                    while True:
                        start = self._cursors.get((k, source), 0)
                        ref = handle.pull.remote(source, start)
                        table, times = await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout=60.0)
                        if not table.num_rows:
                            break
                        n = self._b.copy_in(source, k, start, table, times)
                        self._cursors[(k, source)] = start + table.num_rows
                        state["copied_rows"] += n
                        copied += n
                state["error"], state["pulled_at"] = None, time.time()
            except (TimeoutError, ray.exceptions.RayActorError, ValueError) as e:
                # ValueError: its name not there (yet, or while Ray restarts it elsewhere)
                state["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                self._shard_handles.pop(k, None)
        if copied and self._cfg.buffer.fsync:
            await asyncio.get_running_loop().run_in_executor(None, self._b.sync_job())
        return copied

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
        self._start_pulling()  # a restarted primary merges again on the first call it gets
        return self._b.source_spec(source)

    async def mixture(self) -> dict[str, float]:
        return self._b.mixture()

    async def set_mixture(self, weights: dict[str, float]) -> dict[str, float]:
        return self._b.set_mixture(weights)

    async def sources(self) -> dict[str, Any]:
        self._start_pulling()  # a restarted primary merges again on the first call it gets
        return self._b.sources()

    def _stats(self) -> BufferStats:
        return self._b.stats().model_copy(update={"restarted": self._restarted, "shards": list(self._shard_state.values())})

    async def stats(self) -> dict[str, Any]:
        self._start_pulling()  # a restarted primary merges again on the first call it gets
        return self._stats().model_dump(mode="json")

    async def read(self, source: str, start: int = 0, stop: int | None = None, columns: list[str] | None = None) -> Any:
        return self._b.read(source, start, stop, columns)

    async def pid(self) -> int:
        return os.getpid()

    async def node_id(self) -> str:
        """The Ray node this actor runs on (where a restart put it)."""
        return ray.get_runtime_context().get_node_id()

    async def close(self) -> None:
        self._report(force=True)
        self._b.close()

    async def ready(self) -> bool:
        self._start_pulling()
        return True
