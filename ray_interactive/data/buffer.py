"""The data buffer: named sources of Arrow rows and mixture sampling of training batches.

* A *static* source is a base dataset, used where it lies (a table, a memory-mapped Arrow
  IPC file, a Hugging Face dataset) or decoded once (Parquet).
* A *live* source grows by :meth:`DataBuffer.ingest`. With a ``directory`` every accepted
  table is on disk (:mod:`ray_interactive.data.segments`, fsync by default) before it is
  acknowledged, a repeated ``batch_id`` with the same rows is acknowledged without storing
  them twice (with other rows it is refused), and a new buffer over the same directory (a
  restarted actor, a resumed run) recovers every acknowledged row and batch id. Recent
  rows are held in memory up to a cap; older ones are served from the memory-mapped
  segments.

Batches hold the columns every source shares (the *batch columns*), so a batch mixes rows
of several sources. The sampler's whole state (generator, epoch and fresh cursors,
weights) is the *data position*: it comes with every batch and goes into every checkpoint.
"""

from __future__ import annotations

import collections
import copy
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ray_interactive.core.commands import check_name
from ray_interactive.core.config import BufferConfig
from ray_interactive.core.messages import BufferStats
from ray_interactive.core.mixture import validate_mixture
from ray_interactive.core.task import DataSource
from ray_interactive.data.coalesce import SourceSpec
from ray_interactive.data.hot import ColumnRows, HotRows, gather, hot_rows, select
from ray_interactive.data.sampling import (
    draw_counts,
    draw_recent,
    draw_uniform,
    effective_weights,
    epoch_permutation,
    take_fresh,
)
from ray_interactive.data.schemas import CONTENT_HASH_SCHEME, check_limits, conform, content_hash
from ray_interactive.data.segments import BatchRecord, Segment, SegmentWriter, read_segment, recover_source
from ray_interactive.data.shards import copy_id, parse_copy_id

log = logging.getLogger(__name__)

_BATCH_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Rows leave memory this many bytes at a time, at most an eighth of the memory cap, so
# eviction stays fine-grained (and blocks of rows are merged up to it: see data.hot).
_MERGE_BYTES_MAX = 64 << 20
_MERGE_BYTES_MIN = 256 << 10
_RATE_WINDOW_S = 10.0
_MIN_EARLY_ROLL = 4 << 20  # the open segment is closed early (memory cap) only from this size


def _comparable(digest: str | None) -> bool:
    """Whether a stored digest can be compared with :func:`content_hash`'s (older segments
    have none; a later scheme would not match)."""
    return digest is not None and digest.split(":", 1)[0] == CONTENT_HASH_SCHEME


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def check_batch_id(batch_id: Any) -> str:
    if not isinstance(batch_id, str) or not _BATCH_ID_RE.fullmatch(batch_id):
        raise ValueError(f"batch_id {str(batch_id)[:80]!r} is not valid: use 1-128 letters, digits, '.', '_', ':' or '-'")
    return batch_id


@dataclass(frozen=True)
class _Ack:
    """What the buffer keeps of an acknowledged ingest, to answer its ``batch_id`` again."""

    source: str
    first: int
    rows: int
    time: float
    content_hash: str | None  # None: stored by older code, which kept no digest


@dataclass
class BatchChunk:
    """``len(positions)`` consecutive batches of ``batch_size`` rows in one table.

    ``positions[i]`` is the data position right after batch ``i``; ``meta[i]`` says where
    its rows came from and when the live ones were ingested.
    """

    table: pa.Table
    batch_size: int
    positions: list[dict[str, Any]]
    meta: list[dict[str, Any]]


class _Grow:
    """A growable numpy array (amortised O(1) appends)."""

    def __init__(self, dtype: Any) -> None:
        self._a = np.zeros(1024, dtype)
        self.n = 0

    def fill(self, value: Any, count: int) -> None:
        if self.n + count > len(self._a):
            bigger = np.zeros(max(2 * len(self._a), self.n + count), self._a.dtype)
            bigger[: self.n] = self._a[: self.n]
            self._a = bigger
        self._a[self.n : self.n + count] = value
        self.n += count

    def view(self) -> np.ndarray:
        return self._a[: self.n]


class _Source:
    """One source's rows: a cold prefix (static table or closed segments, mapped) and a
    hot suffix of recent live rows in memory."""

    def __init__(self, spec: DataSource, directory: Path | None, cfg: BufferConfig) -> None:
        check_name(spec.name, "source")
        self.name = spec.name
        self.policy = spec.policy
        self.half_life = spec.half_life
        self.max_row_bytes = spec.max_row_bytes
        self.max_table_bytes = spec.max_table_bytes
        self.allow_non_finite = spec.allow_non_finite
        self.allow_nulls = spec.nulls_allowed
        static = spec.static_table()
        self.live = static is None
        self.log_only = spec.log_only
        self.schema = spec.resolved_schema(static)
        self.segments: list[Segment] = []
        self.times = _Grow(np.float64)  # ingest time of each live row
        self.used = _Grow(np.bool_)  # whether a live row was drawn into a batch yet
        self.rejected = 0
        self.writer: SegmentWriter | None = None
        self.hot: HotRows
        self.broken: str | None = None  # set when the segment files can no longer be trusted
        self.write_error: str | None = None  # the newest ingest's write failed (a full disk): why
        self._cold: pa.Table | None = None
        self._cold_selected: pa.Table | None = None
        self._cold_pieces: tuple[list[pa.RecordBatch], np.ndarray] | None = None  # its record batches and their starts
        self._merge_bytes = int(min(_MERGE_BYTES_MAX, max(_MERGE_BYTES_MIN, cfg.memory_mb * 2**20 / 8)))
        self.batch_ids: list[BatchRecord] = []  # recovered from the segments, for the buffer's acks
        if static is not None:
            self._cold = conform(
                static, self.schema, self.name, allow_empty=True, allow_non_finite=spec.allow_non_finite,
                allow_nulls=self.allow_nulls,
            )
            self.rows = self.cold_rows = self._cold.num_rows
            self.disk_bytes = self._cold.nbytes
            self.hot = hot_rows(self.schema, True, self._merge_bytes, self.rows)  # stays empty
            return
        self.rows = self.cold_rows = 0
        self.disk_bytes = 0
        if directory is not None:
            sdir = directory / self.name
            self.segments = recover_source(sdir, self.schema)
            for seg in self.segments:
                self.disk_bytes += seg.path.stat().st_size
                for rec in seg.batches:
                    self.times.fill(rec.time, rec.rows)
                    self.batch_ids.append(rec)
            self.rows = self.cold_rows = sum(seg.rows for seg in self.segments)
            self.used.fill(True, self.rows)  # recovered rows are not "fresh" to this buffer
            self.writer = SegmentWriter(sdir, self.schema, int(cfg.segment_mb * 2**20), cfg.fsync)
        self.hot = hot_rows(self.schema, self.allow_nulls, self._merge_bytes, self.rows)

    # -- storage -----------------------------------------------------------------------
    @property
    def hot_rows(self) -> int:
        return self.rows - self.cold_rows

    @property
    def hot_bytes(self) -> int:
        return self.hot.nbytes

    @property
    def durable_rows(self) -> int:
        """Rows in closed segments (readable through a memory map)."""
        return sum(seg.rows for seg in self.segments)

    def append(
        self, table: pa.Table, batch_id: str, t: float, sync: bool = True, content_hash: str | None = None
    ) -> int:
        """Store an accepted table (on disk first, if the buffer has a directory); returns
        the sequence number of its first row. Raises ``OSError`` with nothing stored."""
        if self.broken:
            raise OSError(f"source {self.name!r}: its storage failed ({self.broken}); restart the buffer to recover")
        first = self.rows
        table = table.combine_chunks()  # one record batch per ingest in the segment
        if self.writer is not None:
            try:
                self.disk_bytes += self.writer.append(table.to_batches()[0], batch_id, first, t, sync, content_hash)
            except BaseException:
                self._after_failed_write()
                raise
        try:
            self.hot.append(table)
        except OverflowError:  # over 2 GiB of one string column in memory: blocks from now on
            assert isinstance(self.hot, ColumnRows)
            log.warning("source %s: over 2 GiB of a column's rows in memory; holding them as blocks", self.name)
            self.hot = self.hot.as_blocks(self._merge_bytes)
            self.hot.append(table)
        self.rows += table.num_rows
        self.times.fill(t, table.num_rows)
        self.used.fill(False, table.num_rows)
        if self.writer is not None and self.writer.full:
            self._roll()
        return first

    def _after_failed_write(self) -> None:
        """The writer cut its segment back to the last whole batch and closed it: keep
        that segment's earlier batches readable, or stop storing if that is impossible."""
        assert self.writer is not None
        if self.writer.broken:
            self.broken = self.writer.broken
        elif self.writer.rows and self.writer.path is not None:
            try:
                self._add_segment(read_segment(self.writer.path, self.schema, repair=False))
            except Exception as e:  # noqa: BLE001 - recorded; ingests refused until a restart
                self.broken = f"{type(e).__name__}: {e}"

    def _roll(self) -> None:
        assert self.writer is not None
        try:
            closed = self.writer.close()
        except Exception as e:  # noqa: BLE001 - the rows are written; a restart re-reads them
            log.exception("closing segment %s failed", self.writer.path)
            self.broken = f"closing a segment failed: {type(e).__name__}: {e}"
            return
        if closed is not None:
            self._add_segment(closed)

    def _add_segment(self, seg: Segment) -> None:
        self.segments.append(seg)
        self._cold = self._cold_selected = self._cold_pieces = None

    def evict_oldest(self) -> bool:
        """Serve the oldest in-memory rows from the segments instead; False if it can't."""
        if not self.hot.rows or self.writer is None or self.broken:
            return False
        bound = self.hot.evict_bound(self._merge_bytes, self.durable_rows)
        if bound is None:
            # Still in the open segment: close it early, unless it is small (a tiny cap
            # would otherwise make a segment, and a memory map, per ingest).
            if self.writer.size < min(self.writer.segment_bytes, _MIN_EARLY_ROLL):
                return False
            self._roll()
            bound = self.hot.evict_bound(self._merge_bytes, self.durable_rows)
            if bound is None:
                return False
        self.hot.drop_before(bound)
        self.cold_rows = bound
        return True

    def _cold_table(self, schema: pa.Schema) -> pa.Table:
        if self._cold_selected is None or not self._cold_selected.schema.equals(schema):
            if self._cold is None:
                tables = [seg.table for seg in self.segments]
                self._cold = pa.concat_tables(tables) if tables else self.schema.empty_table()
            self._cold_selected = select(self._cold, schema)
            self._cold_pieces = None
        return self._cold_selected

    def _cold_gather(self, idx: np.ndarray, schema: pa.Schema) -> pa.Table:
        table = self._cold_table(schema)
        if self._cold_pieces is None:
            batches = table.to_batches()
            sizes = np.fromiter((b.num_rows for b in batches), np.int64, len(batches))
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
            self._cold_pieces = batches, starts
        return gather(*self._cold_pieces, idx)

    def take(self, idx: np.ndarray, schema: pa.Schema) -> pa.Table:
        """Rows ``idx``, in ``idx`` order, with the columns of ``schema``.

        The order never depends on where rows live (memory or segments): a buffer rebuilt
        from its segments after a restart or resume yields the very batches it would have.
        """
        if len(idx) == 0:
            return schema.empty_table()
        cold = idx < self.cold_rows
        if cold.all():
            return self._cold_gather(idx, schema)
        if not cold.any():
            return self.hot.take(idx, schema)
        hot_pos = np.flatnonzero(~cold)
        cold_pos = np.flatnonzero(cold)
        gathered = pa.concat_tables([self._cold_gather(idx[cold_pos], schema), self.hot.take(idx[hot_pos], schema)])
        # gathered by where the rows live; put them back in the order they were drawn
        return gathered.take(np.argsort(np.concatenate([cold_pos, hot_pos]), kind="stable"))

    def close(self) -> None:
        if self.writer is not None and not self.broken:
            self._roll()


class DataBuffer:
    """Sources, durable ingestion with schema checks, and deterministic mixture sampling."""

    def __init__(
        self,
        sources: list[DataSource],
        seed: int = 0,
        mixture: dict[str, float] | None = None,
        directory: Path | None = None,
        config: BufferConfig | None = None,
    ) -> None:
        self.seed = seed
        self.directory = directory
        self.config = config or BufferConfig()
        self._sources: dict[str, _Source] = {}
        self._weights: dict[str, float] = {}
        self._acks: dict[str, _Ack] = {}
        self._rejections: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self._rejected_total = 0
        self._recent: collections.deque[tuple[float, str, int, int]] = collections.deque()  # (t, source, rows, bytes)
        self.started_at = time.time()
        self.batch_columns: list[str] = []
        self.batch_schema = pa.schema([])
        for s in sources:
            self.register(s)
        if mixture:
            self._weights = validate_mixture(self._weights, mixture)
        self._rng = np.random.default_rng(seed)
        self._cursors: dict[str, list[int]] = {}  # epoch source -> [epoch, position]
        self._fresh: dict[str, int] = {}  # fresh-first source -> first row never drawn
        self._perms: dict[tuple[str, int, int, int, int], np.ndarray] = {}
        self._batches = 0
        self._shard = (0, 1)  # (rank, world): the share of epoch and fresh rows this position draws
        self._initial_weights = dict(self._weights)
        self.batch_columns = self._common_columns()
        self.batch_schema = self._batch_schema()

    # -- sources -----------------------------------------------------------------------
    def register(self, source: DataSource) -> None:
        """Add a source; a static one brings its rows, a live one its stored segments."""
        check_name(source.name, "source")
        if source.name in self._sources:
            raise ValueError(f"source {source.name!r} is already registered")
        s = _Source(source, self.directory, self.config)
        self._sources[source.name] = s
        if not source.log_only:
            self._weights[source.name] = float(source.weight)
        for rec in s.batch_ids:
            self._acks[rec.batch_id] = _Ack(s.name, rec.first, rec.rows, rec.time, rec.content_hash)
        s.batch_ids = []
        self.batch_columns = self._common_columns()
        self.batch_schema = self._batch_schema()

    def _batch_schema(self) -> pa.Schema:
        """The shared columns; nullable where any source's column is."""
        fields = []
        for name in self.batch_columns:
            fs = [s.schema.field(name) for s in self._sources.values() if not s.log_only]
            fields.append(fs[0].with_nullable(any(f.nullable for f in fs)))
        return pa.schema(fields)

    def _common_columns(self) -> list[str]:
        schemas = [s.schema for s in self._sources.values() if not s.log_only]
        if not schemas:
            return []
        common = [f.name for f in schemas[0] if all(sc.get_field_index(f.name) >= 0 for sc in schemas)]
        for name in common:
            types = {str(sc.field(name).type) for sc in schemas}
            if len(types) > 1:
                raise ValueError(f"column {name!r} has different types across sources: {', '.join(sorted(types))}")
        if not common:
            raise ValueError("the data sources share no column, so no batch can mix them")
        return common

    def sources(self) -> dict[str, dict[str, Any]]:
        """Per source: rows, weight (as set and as drawn), policy, live or not, schema."""
        eff = effective_weights(self._weights, {n: s.rows for n, s in self._sources.items()})
        return {
            name: {
                "rows": s.rows,
                "weight": self._weights.get(name, 0.0),
                "effective_weight": eff.get(name, 0.0),
                "waiting_for_data": s.rows == 0 and self._weights.get(name, 0.0) > 0,
                "log_only": s.log_only,
                "policy": s.policy,
                "live": s.live,
                "rejected": s.rejected,
                "storage_error": s.broken or s.write_error,
                "schema": str(s.schema),
            }
            for name, s in self._sources.items()
        }

    def source_spec(self, source: str) -> SourceSpec:
        """What a client checks rows against before it sends them (a live source's schema
        and limits); ``ValueError`` for an unknown or static source."""
        s = self._sources.get(source)
        if s is None:
            raise ValueError(f"unknown source {str(source)[:80]!r}; sources: {', '.join(self._sources)}")
        if not s.live:
            raise ValueError(f"source {source!r} is a static dataset; only live sources take ingested rows")
        return SourceSpec(s.schema, s.allow_non_finite, s.allow_nulls, s.max_row_bytes, s.max_table_bytes)

    # -- ingestion ---------------------------------------------------------------------
    def ingest(
        self, table: pa.Table | pa.RecordBatch, source: str, batch_id: str | None = None, sync: bool = True
    ) -> dict[str, Any]:
        """Check ``table`` against the source's schema, store it durably, acknowledge it.

        With ``sync=False`` the rows are written but not yet fsync'ed: the caller must run
        :meth:`sync_job` before it passes the acknowledgement on (group commit).

        Raises ``ValueError`` (nothing stored) for an unknown or static source or a table
        that does not fit. A ``batch_id`` seen before with the same rows (a retry) is
        acknowledged again (``duplicate`` is True) without storing anything; with other
        rows it is refused (``ValueError``, nothing stored). Returns ``{"source", "rows",
        "first", "last", "batch_id", "duplicate", "time"}``; ``first..last`` are the rows'
        sequence numbers.
        """
        s = self._sources.get(source)
        try:
            if s is None:
                raise ValueError(f"unknown source {str(source)[:80]!r}; sources: {', '.join(self._sources)}")
            if not s.live:
                raise ValueError(f"source {source!r} is a static dataset; only live sources take ingested rows")
            seen: _Ack | None = None
            if batch_id is not None:
                check_batch_id(batch_id)
                seen = self._acks.get(batch_id)
                if seen is not None:
                    if seen.source != source:
                        raise ValueError(f"batch_id {batch_id!r} was already used for source {seen.source!r}")
                    if not _comparable(seen.content_hash):
                        # Stored by older code, which kept no digest of the rows: as then, the id
                        # alone makes it a retry.
                        return self._ack(batch_id, duplicate=True)
            clean = conform(table, s.schema, source, allow_non_finite=s.allow_non_finite, allow_nulls=s.allow_nulls)
            clean = clean.combine_chunks()  # hashed and stored as one record batch
            digest = content_hash(clean)
            if seen is not None:
                if digest == seen.content_hash:
                    return self._ack(batch_id, duplicate=True)  # a retry: stored already
                raise ValueError(
                    f"batch_id {batch_id!r} was already used for different rows ({seen.rows} rows acknowledged "
                    f"at {_when(seen.time)}); nothing was stored - send new rows with a new batch_id"
                )
            check_limits(clean, source, s.max_row_bytes, s.max_table_bytes)
        except ValueError as e:
            self._reject(s, source, str(e))
            raise
        batch_id = batch_id or uuid.uuid4().hex
        t = time.time()
        try:
            first = s.append(clean, batch_id, t, sync, digest)  # an OSError here stored nothing
        except OSError as e:
            s.write_error = f"{type(e).__name__}: {e}"
            message = f"storage: could not write the rows ({e}); nothing was stored - free space and send them again"
            self._reject(s, source, message)
            raise OSError(f"source {source!r}: {message}") from e
        s.write_error = None
        self._acks[batch_id] = _Ack(source, first, clean.num_rows, t, digest)
        self._recent.append((t, source, clean.num_rows, clean.nbytes))
        self._enforce_memory()
        return self._ack(batch_id, duplicate=False, t=t)

    # -- shards ------------------------------------------------------------------------
    def pull(self, source: str, start: int, stop: int, max_bytes: int = 64 << 20) -> tuple[pa.Table, np.ndarray]:
        """Rows ``start..`` of a live source (up to ``stop``, and about ``max_bytes``) with
        their ingest times: what the primary of a sharded buffer copies from this shard."""
        s = self._sources.get(source)
        if s is None or not s.live:
            raise ValueError(f"no live source {str(source)[:80]!r} on this shard")
        stop = min(stop, s.rows)
        if not 0 <= start <= stop:
            raise ValueError(f"bad row range {start}..{stop} of source {source!r} ({s.rows} rows)")
        per_row = max(1, max(s.hot_bytes, s.disk_bytes) // max(1, s.rows))
        stop = min(stop, start + max(1, max_bytes // per_row))
        idx = np.arange(start, stop, dtype=np.int64)
        table = s.take(idx, s.schema) if len(idx) else s.schema.empty_table()
        return table, s.times.view()[start:stop].copy()

    def copy_in(self, source: str, shard: int, first: int, table: pa.Table, times: np.ndarray) -> int:
        """Append rows pulled from ``shard`` (its rows ``first..``), written but not yet
        fsync'ed (the shard holds them durably; see :meth:`sync_job`). A copy stored
        before (a pull repeated after a restart) is skipped. Returns the rows appended."""
        s = self._sources[source]
        if not s.live:
            raise ValueError(f"source {source!r} is a static dataset")
        if not table.schema.equals(s.schema):
            raise ValueError(f"rows from shard {shard} for {source!r} do not have the source's schema")
        bid = copy_id(shard, source, first)
        if bid in self._acks or not table.num_rows:
            return 0
        t = float(times.max())
        start = s.append(table, bid, t, sync=False)
        s.times.view()[start : start + table.num_rows] = times  # each row's own time while in memory
        self._acks[bid] = _Ack(source, start, table.num_rows, t, None)
        self._recent.append((time.time(), source, table.num_rows, table.nbytes))
        self._enforce_memory()
        return table.num_rows

    def shard_cursors(self) -> dict[tuple[int, str], int]:
        """``(shard, source)`` -> how many of that shard's rows of the source are copied here."""
        out: dict[tuple[int, str], int] = {}
        for bid, ack in self._acks.items():
            parsed = parse_copy_id(bid)
            if parsed is not None:
                shard, source, first = parsed
                out[(shard, source)] = max(out.get((shard, source), 0), first + ack.rows)
        return out

    def sync_job(self) -> Callable[[], None]:
        """A function that makes every write so far durable (fsync of each segment with
        unsynced writes); it may run on another thread while ingestion goes on."""
        fds = [fd for s in self._sources.values() if s.writer is not None and (fd := s.writer.sync_fd()) is not None]

        def job() -> None:
            try:
                for fd in fds:
                    os.fsync(fd)
            finally:
                for fd in fds:
                    os.close(fd)

        return job

    def _ack(self, batch_id: str, duplicate: bool, t: float | None = None) -> dict[str, Any]:
        ack = self._acks[batch_id]
        return {
            "source": ack.source,
            "rows": ack.rows,
            "first": ack.first,
            "last": ack.first + ack.rows - 1,
            "batch_id": batch_id,
            "duplicate": duplicate,
            "time": t,
        }

    def _reject(self, s: _Source | None, source: Any, message: str) -> None:
        if s is not None:
            s.rejected += 1
        self._rejected_total += 1
        self._rejections.append({"time": time.time(), "source": str(source)[:80], "message": message[:500]})

    def _enforce_memory(self) -> None:
        cap_bytes = self.config.memory_mb * 2**20
        cap_rows = self.config.memory_rows
        live = [s for s in self._sources.values() if s.live]
        while True:
            hot_bytes = sum(s.hot_bytes for s in live)
            hot_rows = sum(s.hot_rows for s in live)
            if hot_bytes <= cap_bytes and (cap_rows is None or hot_rows <= cap_rows):
                return
            candidates = [s for s in live if s.hot.rows and s.writer is not None]
            if not candidates:
                return  # memory-only buffer (no directory): nothing to fall back on
            oldest = min(candidates, key=lambda s: s.times.view()[s.cold_rows])
            if not oldest.evict_oldest():
                return  # over the cap until the open segment is big enough to close

    # -- mixture -----------------------------------------------------------------------
    def mixture(self) -> dict[str, float]:
        return dict(self._weights)

    def set_mixture(self, weights: dict[str, float]) -> dict[str, float]:
        """Change some sources' weights (effective from the next batch drawn)."""
        self._weights = validate_mixture(self._weights, weights)
        return dict(self._weights)

    # -- position ----------------------------------------------------------------------
    def position(self) -> dict[str, Any]:
        """The sampler state: enough to draw the same batches again."""
        pos = {
            "rng": copy.deepcopy(self._rng.bit_generator.state),
            "cursors": {k: list(v) for k, v in self._cursors.items()},
            "fresh": dict(self._fresh),
            "weights": dict(self._weights),
            "batches": self._batches,
        }
        if self._shard != (0, 1):
            pos["shard"] = list(self._shard)
        return pos

    def initial_position(self, rank: int = 0, world: int = 1) -> dict[str, Any]:
        """Where a run's draws begin; with ``world`` > 1, rank ``rank``'s own stream: its
        own random draws and a disjoint share of every epoch and of the fresh rows."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world}")
        rng = np.random.default_rng(self.seed if world == 1 else [self.seed, rank, world])
        pos: dict[str, Any] = {
            "rng": rng.bit_generator.state, "cursors": {}, "fresh": {}, "weights": dict(self._initial_weights),
            "batches": 0,
        }
        if world > 1:
            pos["shard"] = [rank, world]
        return pos

    def restore(self, position: dict[str, Any]) -> None:
        """Go back (or forward) to a position from :meth:`position`."""
        rng = np.random.default_rng()
        rng.bit_generator.state = position["rng"]
        self._rng = rng
        self._cursors = {k: list(v) for k, v in position["cursors"].items()}
        self._fresh = {k: int(v) for k, v in position.get("fresh", {}).items()}
        self._weights = {**self._weights, **{k: v for k, v in position["weights"].items() if k in self._weights}}
        self._batches = int(position["batches"])
        rank, world = position.get("shard", (0, 1))
        self._shard = (int(rank), int(world))

    # -- sampling ----------------------------------------------------------------------
    def _take_epoch(self, s: _Source, k: int) -> np.ndarray:
        # The cursor keeps the epoch's size: a live source grows, but an epoch is over the
        # rows there were when it began (later ones join the next), also after a restore.
        epoch, pos, *rest = self._cursors.get(s.name, [0, 0])
        size = int(rest[0]) if rest else s.rows
        rank, world = self._shard
        out = []
        while k > 0:
            key = (s.name, epoch, size, rank, world)
            perm = self._perms.get(key)
            if perm is None:
                self._perms = {kk: v for kk, v in self._perms.items() if kk[0] != s.name or kk[3:] != (rank, world)}
                # every rank walks the same permutation, each its own slice: disjoint shares
                perm = self._perms[key] = epoch_permutation(self.seed, s.name, epoch, size)[rank::world]
                if len(perm) == 0:  # fewer rows than ranks
                    perm = self._perms[key] = epoch_permutation(self.seed, s.name, epoch, size)
            take = min(k, len(perm) - pos)
            out.append(perm[pos : pos + take])
            pos += take
            k -= take
            if pos >= len(perm):
                epoch, pos, size = epoch + 1, 0, s.rows
        self._cursors[s.name] = [epoch, pos, size]
        return np.concatenate(out)

    def _indices(self, s: _Source, k: int) -> np.ndarray:
        if s.policy == "epoch":
            return self._take_epoch(s, k)
        if s.policy == "recency":
            return draw_recent(self._rng, s.rows, k, s.half_life)
        if s.policy == "fresh":
            # Rank r of w takes rows r, r + w, ...: the cursor counts in that share.
            rank, world = self._shard
            share = max(0, (s.rows - rank + world - 1) // world)
            cursor = min(self._fresh.get(s.name, 0), share)  # rows lost in a crash were never acknowledged
            new, self._fresh[s.name] = take_fresh(cursor, share, k)
            new = new * world + rank
            if len(new) == k:
                return new
            return np.concatenate([new, draw_uniform(self._rng, s.rows, k - len(new))])
        return draw_uniform(self._rng, s.rows, k)

    def _draw_one(self, n: int, weights: dict[str, float]) -> tuple[list[pa.Table], dict[str, Any]]:
        counts = draw_counts(self._rng, n, weights)
        parts: list[pa.Table] = []
        live_times, first_use = [], []
        for name, k in counts.items():
            s = self._sources[name]
            idx = self._indices(s, k)
            parts.append(s.take(idx, self.batch_schema))
            if s.live:
                live_times.append(s.times.view()[idx])
                used = s.used.view()
                new = np.unique(idx[~used[idx]])
                if len(new):
                    used[new] = True
                    first_use.append(s.times.view()[new])
        self._batches += 1
        meta: dict[str, Any] = {"counts": counts}
        if live_times:  # when the live rows were ingested: the trainer turns these into ages
            t = np.concatenate(live_times)
            meta["live_rows"] = len(t)
            meta["newest_time"] = float(t.max())
            meta["mean_time"] = float(t.mean())
            if first_use:
                meta["first_use_times"] = np.concatenate(first_use)
        return parts, meta

    def next_batches(self, batch_size: int, count: int = 1, position: dict[str, Any] | None = None) -> BatchChunk | None:
        """Draw ``count`` batches of ``batch_size`` rows (from ``position``, if given);
        None while no source has data.

        A source with a weight but no rows yet (a live source before its first ingest)
        is left out and the others are renormalised; ``sources()`` shows it waiting.
        """
        if position is not None:
            self.restore(position)
        sizes = {name: s.rows for name, s in self._sources.items()}
        weights = effective_weights(self._weights, sizes)  # fixed for the whole call
        if not any(weights.values()):
            return None
        parts, positions, metas = [], [], []
        for _ in range(count):
            p, meta = self._draw_one(batch_size, weights)
            parts.extend(p)
            positions.append(self.position())
            metas.append(meta)
        table = pa.concat_tables(parts).combine_chunks()
        return BatchChunk(table, batch_size, positions, metas)

    def read(self, source: str, start: int = 0, stop: int | None = None, columns: list[str] | None = None) -> pa.Table:
        """Rows ``start..stop-1`` of a source in ingest order (for inspection, not training)."""
        s = self._sources.get(source)
        if s is None:
            raise ValueError(f"unknown source {str(source)[:80]!r}; sources: {', '.join(self._sources)}")
        stop = s.rows if stop is None else min(stop, s.rows)
        if not 0 <= start <= stop:
            raise ValueError(f"bad row range {start}..{stop} of source {source!r} ({s.rows} rows)")
        columns = columns or s.schema.names
        unknown = [c for c in columns if s.schema.get_field_index(c) < 0]
        if unknown:
            raise ValueError(f"source {source!r} has no column(s) {', '.join(unknown)}")
        schema = pa.schema([s.schema.field(c) for c in columns])
        idx = np.arange(start, stop, dtype=np.int64)
        return s.take(idx, schema) if len(idx) else schema.empty_table()

    # -- stats -------------------------------------------------------------------------
    def stats(self) -> BufferStats:
        """Freshness and volume figures: per source rows, bytes, ingest rate, rejections."""
        now = time.time()
        while self._recent and self._recent[0][0] < now - _RATE_WINDOW_S:
            self._recent.popleft()
        window = min(_RATE_WINDOW_S, max(now - self.started_at, 1e-3))
        rates: dict[str, list[float]] = {}
        for _, name, rows, nbytes in self._recent:
            r = rates.setdefault(name, [0.0, 0.0])
            r[0] += rows / window
            r[1] += nbytes / window
        per_source = {}
        for name, s in self._sources.items():
            r = rates.get(name, [0.0, 0.0])
            per_source[name] = {
                "rows": s.rows,
                "bytes": s.disk_bytes,
                "memory_bytes": s.hot_bytes if s.live else 0,
                "memory_rows": s.hot_rows if s.live else 0,
                "ingest_rows_per_s": r[0],
                "ingest_bytes_per_s": r[1],
                "rejected": s.rejected,
                "live": s.live,
                # broken: ingests refused until the buffer restarts; write_error: the last write failed
                "storage_error": s.broken or s.write_error,
            }
        return BufferStats.model_validate({
            "time": now,
            "sources": per_source,
            "memory_bytes": sum(s.hot_bytes for s in self._sources.values() if s.live),
            "rejected": self._rejected_total,
            "rejections": list(self._rejections),
        })

    def close(self) -> None:
        """Close open segments (an end-of-stream marker each); nothing is lost without it."""
        for s in self._sources.values():
            s.close()
