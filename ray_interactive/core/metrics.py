"""Metric history per branch: in-memory series, min/max thinning, Parquet persistence.

Each series is a set of growable numpy arrays (step, wall time, value), so a query for a
run with 100k steps slices and thins without touching Python objects per point. On disk,
metrics are Parquet parts in long format (branch, step, time, key, value) appended every
few seconds; :meth:`MetricStore.load` rebuilds the store from them.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

#: Marker row written when a branch is rewound (a run resumed from an earlier checkpoint):
#: points of that branch at or after its step that were written before it are stale.
REWIND_KEY = "__rewind__"

_PART_SCHEMA = pa.schema(
    [("branch", pa.string()), ("step", pa.int64()), ("time", pa.float64()), ("key", pa.string()), ("value", pa.float64())]
)


log = logging.getLogger(__name__)


class MetricPart(NamedTuple):
    """Points taken from a store to be written as one numbered Parquet part. The table is
    built by :meth:`write`, off the caller's lock (the first ``pa.array`` of a process
    imports pandas: ~0.2 s)."""

    path: Path
    rows: list[tuple[str, int, float, str, float]]

    def write(self) -> None:
        table = pa.table([pa.array(c) for c in zip(*self.rows)], schema=_PART_SCHEMA)
        tmp = self.path.with_suffix(".tmp")
        try:
            pq.write_table(table, tmp)
            tmp.replace(self.path)  # a reader never sees half a part
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class PartWriter:
    """Writes a store's parts on a thread of its own, in order, so the caller (the
    controller, under the lock every command and report waits on) does not wait for the
    disk; measured: a flush there held a command 50-170 ms on a busy machine. A part
    that cannot be written (a full disk) is retried, and the ones after it wait behind it,
    so the parts on disk never come out of order; ``on_error`` hears of it (None: written
    again)."""

    def __init__(self, on_error: Callable[[str | None], None], retry_s: float = 2.0) -> None:
        self._on_error, self._retry_s = on_error, retry_s
        self._queue: queue.Queue[MetricPart | None] = queue.Queue()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metric-parts", daemon=True)
        self._thread.start()

    def __call__(self, part: MetricPart) -> None:
        self._queue.put(part)

    def _loop(self) -> None:
        while (part := self._queue.get()) is not None:
            failing = False
            while True:
                try:
                    part.write()
                except OSError as e:
                    failing = True
                    self._on_error(f"metrics could not be written (kept in memory, retried): {e}")
                    if self._closing.wait(self._retry_s):
                        try:
                            part.write()  # one last try at the end
                        except OSError:
                            log.error("metrics lost at close: %s could not be written", part.path)
                        break
                    continue
                if failing:
                    self._on_error(None)
                break
            self._queue.task_done()
        self._queue.task_done()

    def drain(self, timeout: float = 20.0) -> bool:
        """Wait until every part handed over is written (or given up); False on timeout."""
        done = threading.Thread(target=self._queue.join, daemon=True)
        done.start()
        done.join(timeout)
        return not done.is_alive()

    def close(self, timeout: float = 20.0) -> None:
        """Write what is queued (a failing part gets one more try) and end the thread."""
        self._queue.put(None)
        self._closing.set()
        self._thread.join(timeout)


class Series:
    """One metric of one branch: parallel arrays of step, time and value."""

    __slots__ = ("steps", "times", "values", "n")

    def __init__(self, capacity: int = 256) -> None:
        self.steps = np.empty(capacity, np.int64)
        self.times = np.empty(capacity, np.float64)
        self.values = np.empty(capacity, np.float64)
        self.n = 0

    def append(self, step: int, t: float, value: float) -> None:
        """Add a point; one that arrives late (reports may be reordered) is put in place,
        and a repeated step replaces the old value. Rewinds are explicit (:meth:`truncate`)."""
        if self.n and step <= self.steps[self.n - 1]:
            i = int(np.searchsorted(self.steps[: self.n], step, side="left"))
            if self.steps[i] == step:
                self.times[i], self.values[i] = t, value
                return
            self._grow()
            for arr, v in ((self.steps, step), (self.times, t), (self.values, value)):
                arr[i + 1 : self.n + 1] = arr[i : self.n].copy()
                arr[i] = v
            self.n += 1
            return
        self._grow()
        self.steps[self.n] = step
        self.times[self.n] = t
        self.values[self.n] = value
        self.n += 1

    def _grow(self) -> None:
        if self.n < len(self.steps):
            return
        for name in ("steps", "times", "values"):
            old = getattr(self, name)
            new = np.empty(len(old) * 2, old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def truncate(self, step: int) -> None:
        """Drop points at or after ``step``."""
        self.n = int(np.searchsorted(self.steps[: self.n], step, side="left"))

    def window(self, since: int | None = None, until: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Views (no copy) of the points with ``since <= step <= until``."""
        s = self.steps[: self.n]
        lo = 0 if since is None else int(np.searchsorted(s, since, side="left"))
        hi = self.n if until is None else int(np.searchsorted(s, until, side="right"))
        return s[lo:hi], self.times[lo:hi], self.values[lo:hi]


def thin_minmax(values: np.ndarray, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` points keeping each bucket's min and max.

    The points are split into equal buckets along x; from each the smallest and largest
    value survive (so spikes stay visible), plus the last point (the current value).
    Returns sorted indices. O(n), vectorised.
    """
    n = len(values)
    if max_points < 3:
        raise ValueError("max_points must be at least 3")
    if n <= max_points:
        return np.arange(n)
    buckets = (max_points - 1) // 2
    size = math.ceil(n / buckets)
    buckets = math.ceil(n / size)
    y = np.asarray(values, np.float64)
    lo = np.full(buckets * size, np.inf)
    hi = np.full(buckets * size, -np.inf)
    lo[:n] = np.where(np.isnan(y), np.inf, y)
    hi[:n] = np.where(np.isnan(y), -np.inf, y)
    base = np.arange(buckets) * size
    imin = base + lo.reshape(buckets, size).argmin(axis=1)
    imax = base + hi.reshape(buckets, size).argmax(axis=1)
    idx = np.unique(np.concatenate([imin, imax, [n - 1]]))
    return idx[idx < n]


def _read_part(path: Path) -> pa.Table:
    table = pq.ParquetFile(path).read()
    return table if table.schema.equals(_PART_SCHEMA) else table.select(_PART_SCHEMA.names).cast(_PART_SCHEMA)


def _numbers(column: pa.ChunkedArray, dtype: type) -> np.ndarray:
    """A numeric column without nulls as numpy, from its buffers: pyarrow's own to_numpy
    imports pandas (0.4 s of every CLI call on a finished run)."""
    if column.null_count:
        return column.to_numpy()
    parts = [np.frombuffer(c.buffers()[1], dtype=dtype)[c.offset : c.offset + len(c)] for c in column.chunks]
    return np.concatenate(parts) if parts else np.empty(0, dtype)


class MetricStore:
    """All metric series of a run, by branch and key, plus what is not yet on disk."""

    def __init__(self) -> None:
        self.series: dict[str, dict[str, Series]] = defaultdict(dict)
        self._unflushed: list[tuple[str, int, float, str, float]] = []
        self._next_part: int | None = None

    def record(self, branch: str, rows: Iterable[tuple[int, float, dict[str, float]]]) -> int:
        """Add rows of ``(step, time, {key: value})``; non-finite values are kept (NaN loss
        is worth seeing), non-numeric ones are dropped. Returns the number of points."""
        count = 0
        by_key = self.series[branch]
        for step, t, values in rows:
            for key, value in values.items():
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                s = by_key.get(key)
                if s is None:
                    s = by_key[key] = Series()
                s.append(int(step), float(t), float(value))
                self._unflushed.append((branch, int(step), float(t), key, float(value)))
                count += 1
        return count

    def rewind(self, branch: str, step: int, t: float) -> None:
        """Forget points of ``branch`` at or after ``step`` (a resume from a checkpoint)."""
        for s in self.series.get(branch, {}).values():
            s.truncate(step)
        self._unflushed.append((branch, step, t, REWIND_KEY, 0.0))

    def keys(self, branch: str) -> list[str]:
        return sorted(self.series.get(branch, {}))

    def last(self, branch: str, key: str) -> tuple[int, float] | None:
        s = self.series.get(branch, {}).get(key)
        if s is None or s.n == 0:
            return None
        return int(s.steps[s.n - 1]), float(s.values[s.n - 1])

    def last_finite(self, branch: str, key: str) -> tuple[int, float] | None:
        """The newest finite point of a series (a NaN at its end is skipped)."""
        s = self.series.get(branch, {}).get(key)
        i = -1 if s is None else s.n - 1
        while i >= 0 and not math.isfinite(s.values[i]):  # type: ignore[union-attr]
            i -= 1
        return None if i < 0 else (int(s.steps[i]), float(s.values[i]))  # type: ignore[union-attr]

    def last_step(self, branch: str) -> int:
        """The highest step any metric of ``branch`` was logged at (0 if none)."""
        return max((int(s.steps[s.n - 1]) for s in self.series.get(branch, {}).values() if s.n), default=0)

    def query(
        self,
        lineage: list[tuple[str, int | None]],
        keys: list[str] | None = None,
        since: int | None = None,
        max_points: int | None = None,
        until: int | None = None,
    ) -> dict[str, dict[str, list[Any]]]:
        """Series along a lineage: ``[(root_branch, fork_step), ..., (branch, None)]``.

        Each element contributes its points up to the step where the next one forked
        from it. Returns ``{key: {"step": [...], "time": [...], "value": [...]}}``, each
        thinned to ``max_points`` by min/max buckets when given; ``since``/``until``
        bound the steps (the visible range of a zoomed plot).
        """
        names = keys if keys is not None else sorted({k for b, _ in lineage for k in self.series.get(b, {})})
        out: dict[str, dict[str, list[Any]]] = {}
        for key in names:
            parts = []
            for branch, limit in lineage:
                s = self.series.get(branch, {}).get(key)
                if s is not None:
                    parts.append(s.window(since, until if limit is None else (limit if until is None else min(until, limit))))
            if not parts:
                continue
            steps = np.concatenate([p[0] for p in parts])
            times = np.concatenate([p[1] for p in parts])
            values = np.concatenate([p[2] for p in parts])
            if max_points is not None and len(values) > max_points:
                idx = thin_minmax(values, max_points)
                steps, times, values = steps[idx], times[idx], values[idx]
            out[key] = {"step": steps.tolist(), "time": times.tolist(), "value": values.tolist()}
        return out

    # -- persistence -------------------------------------------------------------------
    def take(self, directory: Path) -> MetricPart | None:
        """The unflushed points as the next numbered part (None if none): they count as
        written from now on, so write it (:meth:`MetricPart.write`) or :meth:`give_back` it."""
        if not self._unflushed:
            return None
        directory.mkdir(parents=True, exist_ok=True)
        if self._next_part is None:  # list the directory once, not at every flush
            existing = sorted(directory.glob("part-*.parquet"))
            self._next_part = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        number, self._next_part = self._next_part, self._next_part + 1
        rows, self._unflushed = self._unflushed, []
        return MetricPart(directory / f"part-{number:06d}.parquet", rows)

    def give_back(self, part: MetricPart) -> None:
        """A part that was not written: its points are unflushed again, before newer ones."""
        self._unflushed[:0] = part.rows

    def flush(self, directory: Path) -> Path | None:
        """Write unflushed points as a new Parquet part; return its path (None if none)."""
        part = self.take(directory)
        if part is None:
            return None
        try:
            part.write()
        except BaseException:
            self.give_back(part)  # the next flush writes them
            raise
        return part.path

    @classmethod
    def load(cls, directory: Path) -> MetricStore:
        """Rebuild a store from its Parquet parts, honouring rewinds."""
        store = cls()
        parts = sorted(directory.glob("part-*.parquet")) if directory.exists() else []
        if not parts:
            return store
        # ParquetFile, not read_table: that one imports pyarrow.dataset and pandas (0.5 s of a
        # CLI call on a finished run); the parts are ours, written with _PART_SCHEMA
        table = pa.concat_tables([_read_part(p) for p in parts])
        branch = table["branch"].to_pylist()
        step = _numbers(table["step"], np.int64)
        t = _numbers(table["time"], np.float64)
        key = table["key"].to_pylist()
        value = _numbers(table["value"], np.float64)
        keep = np.ones(len(step), bool)
        branch_arr = np.array(branch, dtype=object)
        for i in np.flatnonzero(np.array(key, dtype=object) == REWIND_KEY):
            stale = (np.arange(len(step)) < i) & (branch_arr == branch[i]) & (step >= step[i])
            keep &= ~stale
            keep[i] = False
        rows: dict[tuple[str, str], list[tuple[int, float, float]]] = defaultdict(list)
        for i in np.flatnonzero(keep):
            rows[(branch[i], key[i])].append((int(step[i]), float(t[i]), float(value[i])))
        for (b, k), pts in rows.items():
            latest = {p[0]: p for p in pts}  # the last write of a step wins
            s = store.series[b][k] = Series(max(16, len(latest)))
            for st in sorted(latest):
                s.append(st, latest[st][1], latest[st][2])
        return store
