"""Coalescing ingest: many small tables of rows sent as few large ones, each acknowledged
only once it is durable. Plain Python (threads and futures), no Ray: the transport is the
``send`` function it is given (the buffer actor through Ray, or the HTTP endpoint).

Why: one ingest call costs about the same whether it carries 16 rows or 1,024 (a Ray call
carrying the table, an fsync), so a deployed model logging each user's interaction as its
own call pays ~40 us a row where one large call pays ~2 us. :class:`IngestCoalescer`
gathers what its callers add into one table per source, bounded by rows, bytes and a delay,
and sends it from one thread; while a send is in flight the next batch grows, so a busy
client sends large tables and an idle one waits at most ``max_delay_s``.

Guarantees:

* **acknowledged only when durable**: :meth:`IngestCoalescer.add` returns a
  ``concurrent.futures.Future`` resolved with the rows' own acknowledgement (their sequence
  numbers in the source) after the buffer has them on disk;
* **exactly once**: each coalesced batch gets one ``batch_id`` and a failed send is retried
  with the same id and the same rows, which the buffer stores once;
* **nothing dropped by a failure**: a send that fails for a passing reason (the buffer
  restarting, a dropped connection) is retried until it succeeds or :meth:`close` gives up,
  and then every unsent future fails saying so;
* **one bad table never sinks the others**: with ``describe`` each added table is checked
  against its source's columns, types and limits in :meth:`add` (a ``ValueError`` right
  there); values (a null, a NaN) are checked by the buffer once per batch, and a batch it
  refuses is sent again add by add, so only the bad add's future fails;
* **bounded memory**: past ``max_pending_rows`` :meth:`add` waits for room (backpressure),
  then raises :class:`IngestBackpressure`.

What it does not do: rows still in memory when the process dies are lost - they were not
acknowledged, so a caller that needs them re-sends what it has no acknowledgement for.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ray_interactive.data.schemas import check_limits, conform

log = logging.getLogger(__name__)

#: ``send(table, source, batch_id) -> ack`` with ``ack["first"]`` the first row's sequence
#: number; raises ``ValueError`` when the rows are refused (not retried), anything else when
#: the outcome is unknown (retried with the same batch_id).
Send = Callable[[pa.Table, str, str], dict[str, Any]]


@dataclass(frozen=True)
class SourceSpec:
    """What a client needs to check rows before they leave: the source's schema and limits."""

    schema: pa.Schema
    allow_non_finite: bool = False
    allow_nulls: bool = False
    max_row_bytes: int | None = None
    max_table_bytes: int | None = None


class IngestBackpressure(TimeoutError):
    """``add`` waited for room and found none: the buffer is not keeping up (or is down)."""


class IngestClosed(RuntimeError):
    """The coalescer is closed: rows added now would never be sent."""


@dataclass
class _Part:
    table: pa.Table
    future: Future[dict[str, Any]]
    added: float = field(default_factory=time.monotonic)


@dataclass
class _Batch:
    source: str
    parts: list[_Part]
    batch_id: str = field(default_factory=lambda: f"coalesced-{uuid.uuid4().hex}")
    attempts: int = 0

    @property
    def rows(self) -> int:
        return sum(p.table.num_rows for p in self.parts)


class IngestCoalescer:
    """Gathers small tables into large durable ingests; see the module's text.

    ``max_rows`` / ``max_bytes`` bound one send (a source's own ``max_table_bytes`` too);
    ``max_delay_s`` is the longest an added row waits for company while a sender is free.
    ``max_in_flight`` sends go at once (one thread each), so the next batch is gathered and
    copied while the buffer writes the last; batches may then be stored out of the order
    they were added in (each batch's rows stay together, in order); ``max_in_flight=1``
    keeps the order. ``describe(source)`` (optional) gives the source's :class:`SourceSpec`, once per
    source, so :meth:`add` can refuse a bad table at once."""

    def __init__(
        self,
        send: Send,
        describe: Callable[[str], SourceSpec] | None = None,
        max_rows: int = 4096,
        max_bytes: int = 8 * 2**20,
        max_delay_s: float = 0.02,
        max_pending_rows: int = 200_000,
        max_in_flight: int = 2,
        retry_base_s: float = 0.2,
        retry_max_s: float = 2.0,
        name: str = "ingest",
    ) -> None:
        for what, v in (("max_rows", max_rows), ("max_bytes", max_bytes), ("max_pending_rows", max_pending_rows),
                        ("max_in_flight", max_in_flight)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{what} must be a whole number >= 1, not {v!r}")
        if not 0 <= max_delay_s <= 60:
            raise ValueError(f"max_delay_s must be between 0 and 60 seconds, not {max_delay_s!r}")
        self._send = send
        self._describe = describe
        self._specs: dict[str, SourceSpec] = {}
        self.max_rows, self.max_bytes, self.max_delay_s = max_rows, max_bytes, max_delay_s
        self.max_pending_rows = max_pending_rows
        self._retry = (retry_base_s, retry_max_s)
        self._queues: dict[str, collections.deque[_Part]] = {}
        self._queued: collections.Counter[str] = collections.Counter()  # rows in each queue
        self._pending_rows = 0  # added, not yet acknowledged or failed (queued and in flight)
        self._cv = threading.Condition()
        self._closing = False
        self._flushing = 0  # callers of flush() waiting: send without waiting for company
        self._giving_up = False
        # figures for a status line
        self.sent_rows = self.sent_batches = self.retries = self.rejected_rows = 0
        self.last_error: str | None = None
        self._threads = [threading.Thread(target=self._loop, name=f"{name}-coalescer-{k}", daemon=True)
                         for k in range(max_in_flight)]
        for t in self._threads:
            t.start()

    # -- the caller's side -------------------------------------------------------------
    def add(self, table: pa.Table | pa.RecordBatch, source: str, timeout: float | None = 30.0) -> Future[dict[str, Any]]:
        """Queue ``table``'s rows for ``source``; the future resolves with their acknowledgement
        (``{"source", "rows", "first", "last", "batch_id", "duplicate"}``) once they are durable,
        or fails with the reason. ``ValueError`` at once for rows the source cannot take."""
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not isinstance(table, pa.Table):
            raise TypeError(f"add takes a pyarrow Table or RecordBatch, not a {type(table).__name__}")
        if not isinstance(source, str):
            raise TypeError(f"add: source must be a source's name (text), not {type(source).__name__}")
        spec = self._spec(source)
        if spec is not None:
            if not table.schema.equals(spec.schema):  # casts make the tables concatenate
                table = conform(table, spec.schema, source, allow_non_finite=spec.allow_non_finite,
                                allow_nulls=spec.allow_nulls)
            elif table.num_rows == 0:
                raise ValueError(f"source {source!r}: the table is empty")
            # A table of the source's own types is checked for values (nulls, NaN) by the
            # buffer only, once per batch: ~50 us an add saved; a batch it refuses is sent
            # again add by add, so a bad value still fails its own add alone.
            check_limits(table, source, spec.max_row_bytes, spec.max_table_bytes)
        elif table.num_rows == 0:
            raise ValueError(f"source {source!r}: the table is empty")
        part = _Part(table, Future())
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while not self._closing and self._pending_rows > 0 and self._pending_rows + table.num_rows > self.max_pending_rows:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise IngestBackpressure(
                        f"{self._pending_rows} rows are waiting to be stored (limit {self.max_pending_rows}); "
                        f"the buffer is not keeping up{': ' + self.last_error if self.last_error else ''}"
                    )
                self._cv.wait(left)
            if self._closing:
                raise IngestClosed("this ingest log is closed; rows added now would never be sent")
            q = self._queues.setdefault(source, collections.deque())
            q.append(part)
            self._queued[source] += table.num_rows
            self._pending_rows += table.num_rows
            if len(q) == 1 or self._queued[source] >= self.max_rows:  # else the sender has its deadline
                self._cv.notify_all()
        return part.future

    def _spec(self, source: str) -> SourceSpec | None:
        if self._describe is None:
            return None
        spec = self._specs.get(source)
        if spec is None:
            spec = self._specs[source] = self._describe(source)  # ValueError for an unknown/static source
        return spec

    @property
    def pending_rows(self) -> int:
        """Rows added and not yet acknowledged (queued or in flight)."""
        with self._cv:
            return self._pending_rows

    def flush(self, timeout: float = 30.0) -> bool:
        """Send everything added so far now and wait until it is acknowledged (or failed);
        False if rows are still pending after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cv:
            self._flushing += 1
            self._cv.notify_all()
            try:
                while self._pending_rows and (left := deadline - time.monotonic()) > 0:
                    self._cv.wait(left)
                return self._pending_rows == 0
            finally:
                self._flushing -= 1

    def close(self, timeout: float = 30.0) -> int:
        """Send what is pending (retrying up to ``timeout``), then stop; every future still
        unsent then fails with :class:`IngestClosed`. Returns the rows that were not sent.
        Idempotent."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self.flush(timeout)
        with self._cv:
            self._giving_up = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(max(1.0, self._retry[1] * 2))
        with self._cv:
            left = [p for q in self._queues.values() for p in q]
            for q in self._queues.values():
                q.clear()
            self._queued.clear()
            lost = sum(p.table.num_rows for p in left)
            self._pending_rows -= lost
        for p in left:
            p.future.set_exception(IngestClosed(f"closed before these rows were acknowledged: {self.last_error}"))
        if lost:
            log.error("ingest log closed with %d rows unsent: %s", lost, self.last_error)
        return lost

    def __enter__(self) -> IngestCoalescer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        with self._cv:
            return {"pending_rows": self._pending_rows, "sent_rows": self.sent_rows, "sent_batches": self.sent_batches,
                    "retries": self.retries, "rejected_rows": self.rejected_rows, "last_error": self.last_error}

    # -- the sender thread -------------------------------------------------------------
    def _loop(self) -> None:
        turn = 0
        while True:
            with self._cv:
                batch = None
                while batch is None:
                    if self._giving_up or (self._closing and not self._pending_rows):
                        return
                    ready = self._ready_source(turn)
                    if ready is None:
                        self._cv.wait(self._wait_s())
                        continue
                    turn += 1
                    batch = self._take(ready)
            self._deliver(batch)

    def _ready_source(self, turn: int) -> str | None:
        """A source whose queue should go now: full, old enough, or a flush/close asks."""
        names = [n for n, q in self._queues.items() if q]
        if not names:
            return None
        names = names[turn % len(names):] + names[: turn % len(names)]  # round robin
        now = time.monotonic()
        for n in names:
            q = self._queues[n]
            if self._flushing or self._closing or now - q[0].added >= self.max_delay_s:
                return n
            if self._queued[n] >= self.max_rows:
                return n
        return None

    def _wait_s(self) -> float | None:
        oldest = [q[0].added for q in self._queues.values() if q]
        if not oldest:
            return None
        return max(0.0, min(oldest) + self.max_delay_s - time.monotonic())

    def _take(self, source: str) -> _Batch:
        q = self._queues[source]
        spec = self._specs.get(source)
        limit = min(self.max_bytes, spec.max_table_bytes or self.max_bytes) if spec else self.max_bytes
        parts = [q.popleft()]
        rows, nbytes = parts[0].table.num_rows, parts[0].table.nbytes
        while q and rows + q[0].table.num_rows <= self.max_rows and nbytes + q[0].table.nbytes <= limit:
            p = q.popleft()
            parts.append(p)
            rows, nbytes = rows + p.table.num_rows, nbytes + p.table.nbytes
        self._queued[source] -= rows
        return _Batch(source, parts)

    def _deliver(self, batch: _Batch) -> None:
        try:
            # one chunk: the buffer's checks and Ray's serialisation go per chunk
            table = pa.concat_tables([p.table for p in batch.parts], promote_options="default").combine_chunks()
        except (pa.ArrowException, ValueError):
            table = None  # tables that do not concatenate (no describe): send them one by one
        if table is None and len(batch.parts) > 1:
            for p in batch.parts:
                self._deliver(_Batch(batch.source, [p]))
            return
        if table is None:
            table = batch.parts[0].table
        delay = self._retry[0]
        while True:
            try:
                ack = self._send(table, batch.source, batch.batch_id)
            except ValueError as e:  # refused: retrying the same rows cannot help
                if len(batch.parts) > 1:  # find the one that is bad; the others go on
                    for p in batch.parts:
                        self._deliver(_Batch(batch.source, [p]))
                    return
                self._settle(batch, error=e)
                return
            except Exception as e:  # the outcome is unknown: the same rows, the same id
                batch.attempts += 1
                with self._cv:
                    self.retries += 1
                    self.last_error = f"{type(e).__name__}: {e}"
                    if self._giving_up:
                        # put the rows back so close() fails their futures with the reason
                        self._queues.setdefault(batch.source, collections.deque()).extendleft(reversed(batch.parts))
                        self._queued[batch.source] += batch.rows
                        return
                log.warning("ingest of %d rows into %r failed (%s); retrying as batch %s", batch.rows, batch.source,
                            self.last_error, batch.batch_id)
                with self._cv:
                    self._cv.wait_for(lambda: self._giving_up, delay)
                delay = min(self._retry[1], delay * 2)
                continue
            self._settle(batch, ack=ack)
            return

    def _settle(self, batch: _Batch, ack: dict[str, Any] | None = None, error: BaseException | None = None) -> None:
        offset = 0
        for p in batch.parts:
            n = p.table.num_rows
            if error is not None:
                p.future.set_exception(error)
            else:
                assert ack is not None
                first = int(ack["first"]) + offset
                p.future.set_result({"source": batch.source, "rows": n, "first": first, "last": first + n - 1,
                                     "batch_id": batch.batch_id, "duplicate": bool(ack.get("duplicate", False))})
            offset += n
        with self._cv:
            self._pending_rows -= batch.rows
            if error is None:
                self.sent_rows += batch.rows
                self.sent_batches += 1
                self.last_error = None
            else:
                self.rejected_rows += batch.rows
                self.last_error = f"{type(error).__name__}: {error}"
            self._cv.notify_all()
