"""A live source's recent rows, held in memory: the rows a draw takes most of.

Two stores with one interface (:class:`HotRows`):

* :class:`ColumnRows` keeps each column in growable buffers of its own (Arrow's layout,
  capacity doubled as rows arrive), so all the rows held are one record batch, a zero-copy
  view: a draw is one ``take`` however many rows there are. It holds columns of fixed
  width (numbers, timestamps, decimals, fixed-size binary and lists of them), strings,
  binary and lists of fixed-width items, without nulls - what training rows are (a string
  column of more than 2 GiB in memory falls back to blocks).
* :class:`BlockRows` keeps the tables as ingested, merged pairwise into larger blocks; a
  draw touches several blocks. It takes any schema (nulls, structs, booleans...).

Eviction drops the oldest rows (the buffer serves them from the segments instead); the
column store frees their memory when the dropped rows outweigh the ones kept (one copy of
those, amortised like the growth).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from ray_interactive.data.schemas import first_null, fixed_width

#: One ``take`` on a piece costs about as much as this many one-row slices (measured:
#: ~25 µs against ~1.5 µs with pyarrow 26 on this machine's CPUs).
_SLICES_PER_TAKE = 16


class HotRows(Protocol):
    """Consecutive rows ``[first, first + rows)`` of one source, in memory."""

    first: int

    @property
    def rows(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    def append(self, table: pa.Table) -> None:
        """Add a conformed table's rows (one record batch) after the last ones."""

    def take(self, idx: np.ndarray, schema: pa.Schema) -> pa.Table:
        """Rows ``idx`` (absolute row numbers, all held), in ``idx`` order, with the
        columns of ``schema``."""

    def evict_bound(self, target_bytes: int, limit: int) -> int | None:
        """A row ``b`` with ``first < b <= limit`` such that dropping the rows before it
        frees about ``target_bytes``; None if there is none."""

    def drop_before(self, row: int) -> None:
        """Forget the rows before ``row`` (a bound from :meth:`evict_bound`)."""


def hot_rows(schema: pa.Schema, allow_nulls: bool, merge_bytes: int, first: int = 0) -> HotRows:
    """The store for a source of ``schema``: columns of our own where its types allow."""
    if not allow_nulls and all(_node(f.type) is not None for f in schema):
        return ColumnRows(schema, first)
    return BlockRows(merge_bytes, first)


# -- columns of our own -------------------------------------------------------------------
# Private: a shared anonymous map cannot grow (its pages past the first size raise SIGBUS).
_PRIVATE = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)


class _Array:
    """A growable array of one dtype, in an anonymous memory map.

    It grows in place (``mremap``: no copy, however large) when nothing holds a view of it
    - :class:`ColumnRows` drops its cached views before it appends - and otherwise by a copy
    into a new map, which leaves the old one to the views that hold it. (A copy of a 512 MB
    column took 1.6 s on this machine, all of it inside an ingest.)
    """

    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype)
        self.n = 0
        self._map: mmap.mmap | None = None
        self.a = np.empty(0, self.dtype)  # the whole map (capacity), of which n are used

    def extend(self, values: Any) -> None:
        src = np.frombuffer(values, self.dtype) if not isinstance(values, np.ndarray) else values
        k = len(src)
        if self.n + k > len(self.a):
            self._grow(self.n + k)
        self.a[self.n : self.n + k] = src
        self.n += k

    def _grow(self, need: int) -> None:
        size = max(2 * len(self.a), need, 65536 // self.dtype.itemsize) * self.dtype.itemsize
        old_map, self.a = self._map, np.empty(0, self.dtype)  # (our own view of the map: let it go)
        if old_map is not None:
            try:
                old_map.resize(size)
                self.a = np.frombuffer(old_map, self.dtype)
                return
            except (BufferError, OSError, SystemError, ValueError):  # a view is still held (or no mremap)
                pass
        new = mmap.mmap(-1, size, flags=_PRIVATE)
        a = np.frombuffer(new, self.dtype)
        if old_map is not None and self.n:
            a[: self.n] = np.frombuffer(old_map, self.dtype, count=self.n)
        self._map, self.a = new, a

    def buffer(self, lo: int, hi: int) -> pa.Buffer:
        return pa.py_buffer(self.a[lo:hi])


class _Node:
    """One column (or a list's items): ``count`` elements."""

    count = 0
    width = 0  # bytes per element if fixed, else 0

    def append(self, arr: pa.Array) -> None:
        raise NotImplementedError

    def view(self, lo: int, hi: int) -> pa.Array:
        raise NotImplementedError

    def nbytes(self, lo: int, hi: int) -> int:
        return self.width * (hi - lo)


class _Fixed(_Node):
    def __init__(self, type_: pa.DataType) -> None:
        self.type = type_
        self.width = type_.bit_width // 8
        self.data = _Array(np.uint8)

    def append(self, arr: pa.Array) -> None:
        if not len(arr):
            return  # (its data buffer may be absent)
        w = self.width
        self.data.extend(memoryview(arr.buffers()[1])[arr.offset * w : (arr.offset + len(arr)) * w])  # type: ignore[index]
        self.count += len(arr)

    def view(self, lo: int, hi: int) -> pa.Array:
        return pa.Array.from_buffers(self.type, hi - lo, [None, self.data.buffer(lo * self.width, hi * self.width)])


class _FixedList(_Node):
    def __init__(self, type_: pa.DataType, child: _Node) -> None:
        self.type = type_
        self.size = type_.list_size
        self.child = child
        self.width = child.width * self.size

    def append(self, arr: pa.Array) -> None:
        self.child.append(arr.flatten())  # the items of its (sliced) rows
        self.count += len(arr)

    def view(self, lo: int, hi: int) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(self.child.view(lo * self.size, hi * self.size), type=self.type)


class _Var(_Node):
    """Strings, binary and lists: offsets into items held after each other, in the
    column's own type (int32 offsets unless it is a large type), so a draw needs no cast."""

    def __init__(self, type_: pa.DataType, child: _Node | None) -> None:
        self.type = type_
        large = pa.types.is_large_string(type_) or pa.types.is_large_binary(type_) or pa.types.is_large_list(type_)
        self.dtype = np.dtype(np.int64 if large else np.int32)
        self.child = child  # None: bytes (strings, binary)
        self.bytes = _Array(np.uint8) if child is None else None
        self.offsets = _Array(self.dtype)
        self.offsets.extend(np.zeros(1, self.dtype))
        self.limit = int(np.iinfo(self.dtype).max)  # items the offsets can address

    def _offsets(self, arr: pa.Array) -> np.ndarray:
        return np.frombuffer(arr.buffers()[1], self.dtype)[arr.offset : arr.offset + len(arr) + 1]  # type: ignore[arg-type]

    def room(self, arrays: list[pa.Array]) -> bool:
        """Whether the items of ``arrays`` fit after those held (int32 offsets: 2 GiB)."""
        items = sum(int(o[-1]) - int(o[0]) for o in (self._offsets(a) for a in arrays if len(a)))
        return int(self.offsets.a[self.count]) + items <= self.limit

    def append(self, arr: pa.Array) -> None:
        n = len(arr)
        if not n:
            return
        off = self._offsets(arr)
        lo, hi = int(off[0]), int(off[-1])
        if self.child is None:
            assert self.bytes is not None
            if hi > lo:  # (all empty: the data buffer may be absent)
                self.bytes.extend(memoryview(arr.buffers()[2])[lo:hi])  # type: ignore[index]
        else:
            self.child.append(arr.values.slice(lo, hi - lo))
        end = self.offsets.a[self.count]
        self.offsets.extend(off[1:] - lo + end)
        self.count += n

    def view(self, lo: int, hi: int) -> pa.Array:
        offsets = self.offsets.a[lo : hi + 1]  # need not start at 0: the items before are skipped
        if self.child is None:
            assert self.bytes is not None
            data = self.bytes.buffer(0, self.bytes.n)
            return pa.Array.from_buffers(self.type, hi - lo, [None, pa.py_buffer(offsets), data])
        items = self.child.view(0, self.child.count)
        kind = pa.LargeListArray if self.dtype == np.int64 else pa.ListArray
        return kind.from_arrays(pa.array(offsets), items, type=self.type)

    def nbytes(self, lo: int, hi: int) -> int:
        first, last = int(self.offsets.a[lo]), int(self.offsets.a[hi])
        inner = last - first if self.child is None else self.child.nbytes(first, last)
        return inner + self.dtype.itemsize * (hi - lo)


def _node(t: pa.DataType) -> _Node | None:
    """A store for a column of type ``t``; None if these stores cannot hold it."""
    if pa.types.is_boolean(t) or pa.types.is_null(t) or pa.types.is_dictionary(t) or isinstance(t, pa.ExtensionType):
        return None
    if fixed_width(t):
        return _Fixed(t)
    if pa.types.is_fixed_size_list(t):
        child = _node(t.value_type)
        return _FixedList(t, child) if child is not None and child.width else None
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return _Var(t, None)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        child = _node(t.value_type)
        return _Var(t, child) if child is not None and child.width else None
    return None


class ColumnRows:
    """Rows in column buffers of our own: all of them one record batch (see the module)."""

    def __init__(self, schema: pa.Schema, first: int = 0) -> None:
        self.schema = schema
        self.first = first
        self._lo = 0  # the first kept row's index in the buffers
        self._nodes = {f.name: _node(f.type) for f in schema}
        assert all(n is not None for n in self._nodes.values()), schema
        self._view: pa.RecordBatch | None = None
        self._selected: dict[tuple[str, ...], pa.RecordBatch] = {}  # the view's columns a draw asks for

    @property
    def rows(self) -> int:
        return self._count - self._lo

    @property
    def _count(self) -> int:
        return next(iter(self._nodes.values())).count if self._nodes else 0  # type: ignore[union-attr]

    def _bytes(self, lo: int, hi: int) -> int:
        return sum(n.nbytes(lo, hi) for n in self._nodes.values())  # type: ignore[union-attr]

    @property
    def nbytes(self) -> int:
        return self._bytes(self._lo, self._count)

    def append(self, table: pa.Table) -> None:
        """Raises ``ValueError`` (nulls) or ``OverflowError`` (more than 2 GiB of one
        string column's rows held) with nothing changed."""
        columns = {}
        for name, node in self._nodes.items():  # all checked before any column grows
            col = table.column(name)
            if first_null(col, self.schema.field(name)) is not None:  # conform refuses them here
                raise ValueError(f"column {name!r} has nulls, which this store cannot hold")
            columns[name] = [c if c.type == node.type else c.cast(node.type) for c in col.chunks]  # type: ignore[union-attr]
        if not self._room(columns) and self._lo:
            self._compact()
        if not self._room(columns):
            raise OverflowError("a column's rows in memory would pass its offsets' 2 GiB")
        self._view = None  # views of the buffers: without them, they grow in place
        self._selected.clear()
        for name, node in self._nodes.items():
            for chunk in columns[name]:
                node.append(chunk)  # type: ignore[union-attr]

    def _room(self, columns: dict[str, list[pa.Array]]) -> bool:
        return all(node.room(columns[name]) for name, node in self._nodes.items() if isinstance(node, _Var))

    def _batch(self) -> pa.RecordBatch:
        if self._view is None:
            lo, hi = self._lo, self._count
            arrays = [node.view(lo, hi) for node in self._nodes.values()]  # type: ignore[union-attr]
            self._view = pa.RecordBatch.from_arrays(arrays, names=list(self._nodes))
        return self._view

    def take(self, idx: np.ndarray, schema: pa.Schema) -> pa.Table:
        names = tuple(schema.names)
        view = self._selected.get(names)
        if view is None:
            view = self._selected[names] = self._batch().select(list(names))
        batch = view.take(pa.array(idx - self.first))
        if not batch.schema.equals(schema):  # the same types; nullability may differ between sources
            batch = pa.RecordBatch.from_arrays(batch.columns, schema=schema)
        return pa.Table.from_batches([batch])

    def evict_bound(self, target_bytes: int, limit: int) -> int | None:
        lo, hi = self._lo, min(self._count, self._lo + limit - self.first)
        if hi <= lo:
            return None
        # the fewest rows from the oldest that reach the target (bytes grow with rows)
        a, b = lo + 1, hi
        while a < b:
            mid = (a + b) // 2
            if self._bytes(lo, mid) >= target_bytes:
                b = mid
            else:
                a = mid + 1
        return self.first + a - lo

    def drop_before(self, row: int) -> None:
        k = row - self.first
        if k <= 0:
            return
        self._lo += k
        self.first = row
        self._view = None
        self._selected.clear()
        if self._bytes(0, self._lo) > self.nbytes:  # more dropped than kept: free it
            self._compact()

    def as_blocks(self, merge_bytes: int) -> BlockRows:
        """The rows held, as one block of a :class:`BlockRows` (no copy)."""
        blocks = BlockRows(merge_bytes, self.first)
        if self.rows:
            view = self._batch()
            blocks.adopt(_Block(self.first, pa.Table.from_batches([view]), self.nbytes))
        return blocks

    def _compact(self) -> None:
        """Copy the rows kept into new buffers (the dropped ones go with the old)."""
        kept = pa.Table.from_batches([self._batch()])
        self._nodes = {f.name: _node(f.type) for f in self.schema}
        self._lo = 0
        self._view = None
        self._selected.clear()
        self.append(kept)


# -- blocks as ingested -------------------------------------------------------------------
def owned(table: pa.Table) -> pa.Table:
    """``table`` in memory this process owns. A table that came as a Ray argument may be
    a view of the object store, where holding it would pin memory the cap doesn't see."""
    batches = table.to_batches()
    if len(batches) != 1 or table.nbytes < 64 << 10:  # small ones are merged (copied) soon anyway
        return table
    return pa.Table.from_batches([pa.ipc.read_record_batch(batches[0].serialize(), table.schema)])


def one_batch(table: pa.Table) -> pa.RecordBatch:
    """``table`` as a single record batch (copying only if it has several chunks)."""
    batches = table.combine_chunks().to_batches()
    if len(batches) == 1:
        return batches[0]
    return pa.RecordBatch.from_pylist([], schema=table.schema)


def select(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table``'s columns of ``schema``, labelled with it (nullability may differ between
    sources; the types are the same, so this copies nothing)."""
    return table.select(schema.names).cast(schema)


def gather(pieces: list[pa.RecordBatch], starts: np.ndarray, idx: np.ndarray) -> pa.Table:
    """Rows ``idx`` (in ``idx`` order) of the consecutive ``pieces`` that begin at row
    ``starts`` (sorted).

    Rows scattered over many pieces (a uniform draw over a large source, whose rows lie in
    a record batch per ingest) are cut out as one-row slices, which cost no copy, and
    concatenated once: a ``take`` per piece touched cost ~25 µs each, and a ``take`` on a
    table of many chunks costs time in proportion to all its rows (Arrow resolves or joins
    every chunk). Rows in few pieces are taken, one ``take`` per piece.
    """
    which = np.searchsorted(starts, idx, side="right") - 1
    first = which[0]
    if (which == first).all():
        return pa.Table.from_batches([pieces[first].take(idx - starts[first])])
    order = np.argsort(which, kind="stable")
    grouped = which[order]
    cuts = np.flatnonzero(grouped[1:] != grouped[:-1]) + 1  # where the next piece's rows begin
    if len(idx) < _SLICES_PER_TAKE * (len(cuts) + 2):
        return pa.Table.from_batches(slices(pieces, starts, which, idx)).combine_chunks()
    parts = []
    for rows in np.split(order, cuts):
        w = which[rows[0]]
        parts.append(pieces[w].take(idx[rows] - starts[w]))
    # gathered by piece; put the rows back in the order they were drawn
    return pa.Table.from_batches(parts).combine_chunks().take(np.argsort(order, kind="stable"))


def slices(pieces: list[pa.RecordBatch], starts: np.ndarray, which: np.ndarray, idx: np.ndarray) -> list[pa.RecordBatch]:
    """One-row views of rows ``idx`` (in ``which`` pieces), in ``idx`` order."""
    offsets = (idx - starts[which]).tolist()
    return [pieces[w].slice(o, 1) for w, o in zip(which.tolist(), offsets, strict=True)]


@dataclass
class _Block:
    """Consecutive rows ``[start, start + rows)``."""

    start: int
    table: pa.Table
    nbytes: int
    _selected: pa.RecordBatch | None = None

    @property
    def rows(self) -> int:
        return self.table.num_rows

    def select(self, schema: pa.Schema) -> pa.RecordBatch:
        """Its rows as one record batch with the columns of ``schema`` (cached)."""
        if self._selected is None or not self._selected.schema.equals(schema):
            self._selected = one_batch(select(self.table, schema))
        return self._selected


class BlockRows:
    """Rows in the tables they came in, merged pairwise (a binary counter) up to
    ``merge_bytes``: O(log rows) blocks below it, each row copied O(log rows) times."""

    def __init__(self, merge_bytes: int, first: int = 0) -> None:
        self.first = first
        self._merge_bytes = merge_bytes
        self._blocks: list[_Block] = []
        self._starts: np.ndarray | None = None  # the blocks' starts, for take()
        self._rows = 0
        self._nbytes = 0

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def append(self, table: pa.Table) -> None:
        table = owned(table)  # the merges copy small ones; a large one is copied here
        blocks = self._blocks
        blocks.append(_Block(self.first + self._rows, table, table.nbytes))
        self._rows += table.num_rows
        self._nbytes += table.nbytes
        while (len(blocks) >= 2 and blocks[-1].rows >= blocks[-2].rows
               and blocks[-1].nbytes + blocks[-2].nbytes <= self._merge_bytes):
            b, a = blocks.pop(), blocks.pop()
            blocks.append(_Block(a.start, pa.concat_tables([a.table, b.table]).combine_chunks(), a.nbytes + b.nbytes))
        self._starts = None

    def adopt(self, block: _Block) -> None:
        """Hold ``block`` (rows right after those held) as it is."""
        self._blocks.append(block)
        self._rows += block.rows
        self._nbytes += block.nbytes
        self._starts = None

    def take(self, idx: np.ndarray, schema: pa.Schema) -> pa.Table:
        if self._starts is None:
            self._starts = np.fromiter((b.start for b in self._blocks), np.int64, len(self._blocks))
        return gather([b.select(schema) for b in self._blocks], self._starts, idx)

    def evict_bound(self, target_bytes: int, limit: int) -> int | None:
        if not self._blocks:
            return None
        end = self._blocks[0].start + self._blocks[0].rows  # a whole block at a time
        return end if end <= limit else None

    def drop_before(self, row: int) -> None:
        while self._blocks and self._blocks[0].start + self._blocks[0].rows <= row:
            block = self._blocks.pop(0)
            self._rows -= block.rows
            self._nbytes -= block.nbytes
        self.first = row
        self._starts = None
