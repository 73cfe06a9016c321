"""Durable storage of a live source: append-only Arrow IPC stream segments.

Layout, in the run directory::

    buffer/<source>/seg-<first seq, 12 digits>.arrow

Each segment is a standard Arrow IPC *stream* (``pyarrow.ipc.open_stream`` reads it).
One accepted table is one record batch, written with custom metadata (its ``batch_id``,
the sequence number of its first row, the ingest time, a digest of its rows: a re-sent
``batch_id`` is a retry only with the same rows) and flushed - fsync by default -
before the ingest is acknowledged. A segment is closed (end-of-stream marker) when it
reaches its size, and never written again.

Recovery reads every segment memory-mapped, so the recovered rows cost no heap memory.
A write torn by a crash can only be the last message of the newest segment: reading stops
at the first message that does not parse, the file is truncated to the last whole batch
(that batch was never acknowledged), and writing continues in a new segment.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

log = logging.getLogger(__name__)

_SEGMENT_RE = re.compile(r"^seg-(\d{12})\.arrow$")


@dataclass
class BatchRecord:
    """What a segment says about one stored table."""

    batch_id: str
    first: int  # sequence number of its first row in the source
    rows: int
    time: float  # when it was ingested (epoch seconds)
    content_hash: str | None = None  # schemas.content_hash of its rows; None in segments of older code


@dataclass
class Segment:
    """One closed segment, memory-mapped."""

    path: Path
    first: int
    rows: int
    table: pa.Table  # zero-copy view of the file
    batches: list[BatchRecord] = field(default_factory=list)


def segment_path(directory: Path, first: int) -> Path:
    return directory / f"seg-{first:012d}.arrow"


def _fsync_dir(directory: Path) -> None:
    """Make a new file's directory entry durable too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentWriter:
    """Appends tables of one schema to the source's newest segment, rolling at a size."""

    def __init__(self, directory: Path, schema: pa.Schema, segment_bytes: int, fsync: bool = True) -> None:
        self.directory = directory
        self.schema = schema
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._file = None  # the open segment, if any
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self.path: Path | None = None
        self.rows = 0  # rows in the open segment
        self.dirty = False  # written to the OS but not yet fsync'ed (see sync_fd)
        self.broken: str | None = None  # why the file could not be put back in order, if so

    def append(
        self,
        batch: pa.RecordBatch,
        batch_id: str,
        first: int,
        t: float,
        sync: bool = True,
        content_hash: str | None = None,
    ) -> int:
        """Write one batch; returns the bytes it took. With ``sync`` (and ``fsync`` on) it
        is on disk when this returns; without, the caller makes it durable later
        (:meth:`sync_fd`), which lets one fsync cover many concurrent ingests.

        If the write fails, the segment is cut back to its last whole batch, synced and
        closed (``path``/``rows`` still describe it) and the error is raised."""
        if self._writer is None:
            self._open(first)
        assert self._writer is not None and self._file is not None
        before = self._file.tell()
        meta = {"batch_id": batch_id, "first": str(first), "time": repr(t)}
        if content_hash is not None:
            meta["content_hash"] = content_hash
        try:
            self._writer.write_batch(batch, custom_metadata=meta)
            self._file.flush()
            if self.fsync and sync:
                os.fsync(self._file.fileno())
            else:
                self.dirty = self.fsync
        except BaseException:
            # Leave no half-written batch behind a later one: cut it off and start afresh.
            self._abort(before)
            raise
        size = self._file.tell() - before
        self.rows += batch.num_rows
        return size

    @property
    def size(self) -> int:
        """Bytes in the open segment (0 if none is open)."""
        return self._file.tell() if self._file is not None else 0

    @property
    def full(self) -> bool:
        return self.size >= self.segment_bytes

    def _open(self, first: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = segment_path(self.directory, first)
        if self.path.exists():  # only after a crash between open and the first write
            self.path.unlink()
        self._file = open(self.path, "wb")
        self._writer = pa.ipc.new_stream(self._file, self.schema)
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
            _fsync_dir(self.directory)
        self.rows = 0

    def sync_fd(self) -> int | None:
        """A duplicate of the open segment's descriptor if it has unsynced writes (the
        caller fsyncs and closes it, possibly on another thread: closing the segment
        meanwhile does not affect the duplicate)."""
        if not self.dirty or self._file is None:
            return None
        self.dirty = False
        return os.dup(self._file.fileno())

    def _abort(self, size: int) -> None:
        try:
            assert self._file is not None
            self._file.flush()
            self._file.truncate(size)
            if self.fsync:  # earlier writes may be waiting for a group fsync
                os.fsync(self._file.fileno())
            self._file.close()
        except Exception as e:  # the disk may be what failed: recovery cuts the tail anyway
            log.exception("could not put %s back in order after a failed write", self.path)
            self.broken = f"{type(e).__name__}: {e}"
        self.dirty = False
        self._file, self._writer = None, None

    def close(self) -> Segment | None:
        """Close the open segment (end-of-stream marker) and return it memory-mapped."""
        if self._writer is None:
            return None
        assert self._file is not None and self.path is not None
        try:
            self._writer.close()
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self._file.close()
        finally:
            self.dirty = False
            self._file, self._writer = None, None
        return read_segment(self.path, self.schema, repair=False)


def read_segment(path: Path, schema: pa.Schema, repair: bool = True) -> Segment:
    """Map a segment and read its batches. With ``repair`` (the newest segment only: the
    one a crash can have torn) a bad tail is cut off the file; otherwise it is an error."""
    m = _SEGMENT_RE.match(path.name)
    if not m:
        raise ValueError(f"{path} is not a segment file")
    first = int(m.group(1))
    source = pa.memory_map(str(path))
    batches: list[pa.RecordBatch] = []
    records: list[BatchRecord] = []
    good = 0
    torn: str | None = None
    try:
        reader = pa.ipc.open_stream(source)
        if not reader.schema.equals(schema):
            raise ValueError(f"{path}: schema {reader.schema} differs from the source's {schema}")
        good = source.tell()
        expected = first
        while True:
            try:
                batch, meta = reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                break
            rec = _record(meta, batch.num_rows)
            if rec is None or rec.first != expected:
                torn = f"batch at byte {good} has bad metadata"
                break
            batches.append(batch)
            records.append(rec)
            expected += batch.num_rows
            good = source.tell()
    except (pa.ArrowException, OSError) as e:  # a torn or garbled message
        torn = str(e)
    size = path.stat().st_size
    bad_tail = torn is not None or (good < size and not _is_eos(path, good, size))
    if bad_tail and not repair:
        source.close()
        raise ValueError(
            f"segment {path} is damaged after byte {good} of {size} ({torn or 'trailing bytes'}); it is not the "
            "newest segment, so this is not a torn write: refusing to cut acknowledged data"
        )
    if torn is not None and good == 0:  # not even a whole schema: nothing was ever acknowledged
        source.close()
        log.warning("dropping %s: %s", path, torn)
        path.unlink()
        return Segment(path, first, 0, schema.empty_table(), [])
    if bad_tail:
        log.warning("segment %s: torn tail after byte %d of %d cut off (%s)", path, good, size, torn or "trailing bytes")
        source.close()
        with open(path, "r+b") as f:
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
        return read_segment(path, schema)
    table = pa.Table.from_batches(batches, schema=schema)
    return Segment(path, first, table.num_rows, table, records)


def _is_eos(path: Path, offset: int, size: int) -> bool:
    """Whether the bytes after ``offset`` are just an end-of-stream marker (or zeros)."""
    if size - offset > 8:
        return False
    with open(path, "rb") as f:
        f.seek(offset)
        tail = f.read()
    return tail in (b"\xff\xff\xff\xff\x00\x00\x00\x00", b"\x00" * len(tail)) or tail == b"\xff\xff\xff\xff"[: len(tail)]


def _record(meta: object, rows: int) -> BatchRecord | None:
    try:
        md = {k.decode(): v.decode() for k, v in dict(meta).items()}  # type: ignore[call-overload]
        return BatchRecord(md["batch_id"], int(md["first"]), rows, float(md["time"]), md.get("content_hash"))
    except (KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError):
        return None


def recover_source(directory: Path, schema: pa.Schema) -> list[Segment]:
    """Every segment of a source, in order, torn tails cut; rows must be contiguous."""
    if not directory.exists():
        return []
    paths = sorted(p for p in directory.iterdir() if _SEGMENT_RE.match(p.name))
    segments: list[Segment] = []
    expected = 0
    for i, p in enumerate(paths):
        seg = read_segment(p, schema, repair=i == len(paths) - 1)
        if seg.rows == 0:
            if p.exists():  # an empty segment (opened, never written): not needed
                p.unlink()
            continue
        if seg.first != expected:
            raise ValueError(f"{directory}: segment {p.name} starts at row {seg.first}, expected {expected}")
        segments.append(seg)
        expected += seg.rows
    return segments
