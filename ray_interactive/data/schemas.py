"""Checking ingested Arrow tables against a source's schema.

A table is cast to the source's schema only where the cast keeps every value: a wider
integer or float, an integer a float holds exactly, a float with no fraction into an
integer, float64 into float32 (rounded to the nearest float32, as any float32 arithmetic
would, but never overflowing to infinity). Across kinds nothing is converted: a boolean
or a numeric string is not a number, a number is not a string. Float values that are NaN
or infinite are refused unless the source allows them, and so are nulls, at any nesting
level (a schema's ``nullable=False`` holds even where a source allows nulls).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def conform(
    table: pa.Table | pa.RecordBatch,
    schema: pa.Schema,
    source: str,
    allow_empty: bool = False,
    allow_non_finite: bool = False,
    allow_nulls: bool = False,
) -> pa.Table:
    """Return ``table`` cast to ``schema``, or raise ``ValueError`` naming the problem.

    Columns may come in any order. Exact casts (int32 -> int64, say) are done; casts that
    lose a value (float -> int with a fraction, int overflow, a float that overflows the
    narrower float) or change its kind (bool or string -> number) are refused, as are NaN
    and infinite floats (unless ``allow_non_finite``), nulls at any nesting level (unless
    ``allow_nulls``; even then where the schema says ``nullable=False``, also in list
    items, struct fields, map keys and items), missing, extra and duplicate columns, and
    empty tables. The message names the column and, for a bad value, its row.
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not isinstance(table, pa.Table):
        raise ValueError(f"source {source!r}: expected a pyarrow Table or RecordBatch, got {type(table).__name__}")
    if table.num_rows == 0 and not allow_empty:
        raise ValueError(f"source {source!r}: the table is empty")
    check_unique_columns(table.column_names, f"source {source!r}")
    if table.num_columns and table.column(0).num_chunks > 4:
        # The checks below go chunk by chunk in Python: one copy into a single chunk is far
        # cheaper than that for a table concatenated from many small ones (6.7 ms -> 66 us
        # for 4,096 rows from 256 tables).
        table = table.combine_chunks()
    names = table.column_names
    missing = [f.name for f in schema if f.name not in names]
    if missing:
        raise ValueError(f"source {source!r}: missing column(s) {', '.join(missing)}")
    extra = [n for n in names if schema.get_field_index(n) < 0]
    if extra:
        raise ValueError(f"source {source!r}: unexpected column(s) {', '.join(extra)}")
    columns = []
    for field in schema:
        try:
            columns.append(_conform_column(table.column(field.name), field, source, allow_non_finite, allow_nulls))
        except (pa.ArrowException, NotImplementedError, TypeError, AttributeError, IndexError) as e:
            # A type this check has not met: refuse the table with the reason, never fail the buffer.
            raise ValueError(
                f"source {source!r}: column {field.name!r} ({table.column(field.name).type}) could not be checked "
                f"against {field.type}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            ) from None
    return pa.Table.from_arrays(columns, schema=schema)


def _conform_column(
    col: pa.ChunkedArray, field: pa.Field, source: str, allow_non_finite: bool, allow_nulls: bool
) -> pa.ChunkedArray:
    """One column cast to its field and checked (see :func:`conform`)."""
    where = f"source {source!r}: column {field.name!r}"
    if not col.type.equals(field.type):
        if not same_kind(col.type, field.type):
            raise ValueError(f"{where} has type {col.type}, expected {field.type} (no conversion between those kinds)")
        try:
            cast = pc.cast(col, field.type, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ValueError(
                f"{where} has type {col.type}, expected {field.type} ({str(e).splitlines()[0]})"
            ) from None
        overflow = first_overflow(col, cast)
        if overflow is not None:
            row, value = overflow
            raise ValueError(
                f"{where} has type {col.type}, expected {field.type}: the value {value!r} in row {row} does "
                f"not fit (it would become infinite)"
            )
        col = cast
    if not field.nullable and col.null_count:
        raise ValueError(f"{where} has {col.null_count} null(s) but is not nullable")
    null = first_null(col, field, only_not_nullable=allow_nulls)
    if null is not None:
        row, path, nullable = null
        inside = f" (inside its {' > '.join(path)})" if path else ""
        if not nullable:
            raise ValueError(
                f"{where}, row {row} holds a null{inside} where the schema says nullable=False: "
                "send a value there, or make that field nullable"
            )
        raise ValueError(
            f"{where}, row {row} holds a null{inside}: nulls are refused, one makes a loss NaN "
            "(a source that needs them: DataSource(..., allow_nulls=True))"
        )
    if not allow_non_finite:
        bad = first_non_finite(col)
        if bad is not None:
            row, value = bad
            raise ValueError(
                f"{where}, row {row} holds {value!r}: NaN and infinite values are refused "
                "(a source that needs them: DataSource(..., allow_non_finite=True))"
            )
    return col


def check_unique_columns(names: list[str], where: str) -> None:
    """Refuse a table with two columns of one name (Ray cannot even serialise one)."""
    seen: set[str] = set()
    dupes = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
    if dupes:
        shown = ", ".join(repr(n[:64]) for n in dupes[:10])
        raise ValueError(f"{where}: duplicate column name(s) {shown}; every column needs its own name")


def _kind(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        return _kind(t.value_type)
    for name, test in (
        ("null", pa.types.is_null),
        ("bool", pa.types.is_boolean),
        ("number", lambda x: pa.types.is_integer(x) or pa.types.is_floating(x)),
        ("decimal", pa.types.is_decimal),
        ("text", lambda x: pa.types.is_string(x) or pa.types.is_large_string(x) or pa.types.is_string_view(x)),
        ("bytes", lambda x: pa.types.is_binary(x) or pa.types.is_large_binary(x) or pa.types.is_binary_view(x)
         or pa.types.is_fixed_size_binary(x)),
        ("list", lambda x: pa.types.is_list(x) or pa.types.is_large_list(x) or pa.types.is_fixed_size_list(x)
         or pa.types.is_list_view(x) or pa.types.is_large_list_view(x)),
        ("struct", pa.types.is_struct),
        ("map", pa.types.is_map),
    ):
        if test(t):
            return name
    return str(t)  # temporal and other types: the same type only (up to unit, checked by the cast)


def same_kind(src: pa.DataType, dst: pa.DataType) -> bool:
    """Whether a cast from ``src`` to ``dst`` stays within one kind of value (numbers,
    text, bytes, lists of the same kind, ...); temporal types only to their own kind."""
    src = src.value_type if pa.types.is_dictionary(src) else src
    a, b = _kind(src), _kind(dst)
    if a == "null":
        return True  # an all-null column: the nullability check decides
    if a == "map":
        return b == "map" and same_kind(src.key_type, dst.key_type) and same_kind(src.item_type, dst.item_type)
    if a == "list":
        return b == "list" and same_kind(src.value_type, dst.value_type)
    if a == "struct":
        if b != "struct" or src.num_fields != dst.num_fields:
            return False
        return all(same_kind(src.field(i).type, dst.field(i).type) for i in range(src.num_fields))
    if a == b:
        return True
    return type(src) is type(dst) and a not in ("bool", "number", "decimal", "text", "bytes")


class _Node:
    """One array in a column's nesting: the column itself, or the items of its lists, the
    fields of its structs, the keys or items of its maps. It holds only values that exist:
    those under a null list, struct or map are left out (Arrow leaves them undefined)."""

    def __init__(
        self,
        array: pa.Array,
        field: pa.Field,
        path: tuple[str, ...] = (),
        parent: _Node | None = None,
        positions: Callable[[], np.ndarray] | None = None,
    ) -> None:
        self.array = array
        self.field = field  # the schema field its values belong to (its nullable flag)
        self.path = path  # where it is in the column, e.g. ("list items", "field 'a'")
        self._parent = parent
        self._positions = positions  # position in the parent of each value; None: the same

    @functools.cached_property
    def rows(self) -> np.ndarray | None:
        """The top-level row of each value (None: the same positions); computed only when
        a bad value asks for its row."""
        if self._parent is None:
            return None
        up = self._parent.rows
        if self._positions is None:
            return up
        pos = self._positions()
        return pos if up is None else up[pos]

    def row(self, i: int) -> int:
        rows = self.rows
        return i if rows is None else int(rows[i])


def _list_parents(arr: pa.Array) -> Callable[[], np.ndarray]:
    """For ``arr.flatten()``'s values, the list each came from (pc.list_parent_indices also
    counts the values behind a null list, which flatten leaves out)."""

    def parents() -> np.ndarray:
        lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
        return np.repeat(np.arange(len(arr)), lengths)

    return parents


def _nodes(node: _Node) -> Iterator[_Node]:
    """``node`` and every array nested in it, outer ones first."""
    arr, t = node.array, node.array.type
    if pa.types.is_dictionary(t):  # its nulls may be in the dictionary, where null_count does not look
        node = _Node(arr.dictionary_decode(), node.field, node.path, node._parent, node._positions)
        arr, t = node.array, node.array.type
    yield node
    if pa.types.is_map(t):  # list kernels have none for a map (list_parent_indices aborts): go by list<struct>
        entries = arr.cast(pa.list_(pa.struct([t.key_field, t.item_field])))
        flat = entries.flatten()
        parents = _list_parents(entries)
        for i, (label, f) in enumerate((("map keys", t.key_field), ("map items", t.item_field))):
            yield from _nodes(_Node(flat.field(i), f, (*node.path, label), node, parents))
    elif _kind(t) == "list":
        yield from _nodes(_Node(arr.flatten(), t.value_field, (*node.path, "list items"), node, _list_parents(arr)))
    elif pa.types.is_struct(t):
        keep: np.ndarray | None = None
        if arr.null_count:  # a null struct has no field values: leave them out
            keep = np.flatnonzero(pc.is_valid(arr).to_numpy(zero_copy_only=False))
        for i in range(t.num_fields):
            child = arr.field(i) if keep is None else arr.field(i).take(pa.array(keep))
            kept = None if keep is None else (lambda k=keep: k)
            yield from _nodes(_Node(child, t.field(i), (*node.path, f"field {t.field(i).name!r}"), node, kept))


def _float_leaves(arr: pa.Array) -> Iterator[_Node]:
    """The float arrays inside ``arr`` (itself, or in its lists, structs and maps)."""
    return (n for n in _nodes(_Node(arr, pa.field("", arr.type))) if pa.types.is_floating(n.array.type))


def first_null(
    col: pa.ChunkedArray | pa.Array, field: pa.Field, only_not_nullable: bool = False
) -> tuple[int, tuple[str, ...], bool] | None:
    """``(row, path, nullable)`` of ``col``'s first null at any nesting level: its top-level
    row, where it is (``()``: the column's own value) and whether the schema lets it be
    null there. With ``only_not_nullable``, only nulls where the schema says
    ``nullable=False`` count. Where nothing is null this looks at one ``null_count`` per
    array."""
    for start, chunk in _chunks(col):
        best: tuple[int, tuple[str, ...], bool] | None = None
        for node in _nodes(_Node(chunk, field)):
            if not node.array.null_count or (only_not_nullable and node.field.nullable):
                continue
            i = int(np.argmin(pc.is_valid(node.array).to_numpy(zero_copy_only=False)))
            row = start + node.row(i)
            if best is None or row < best[0]:  # ties: the outer array, met first, says it best
                best = (row, node.path, node.field.nullable)
        if best is not None:
            return best
    return None


def _finite_mask(arr: pa.Array) -> np.ndarray:
    if arr.type == pa.float16():
        arr = arr.cast(pa.float32())
    return pc.fill_null(pc.is_finite(arr), True).to_numpy(zero_copy_only=False)


def _chunks(col: pa.ChunkedArray | pa.Array) -> list[tuple[int, pa.Array]]:
    """(offset of the chunk's first row, chunk)."""
    if isinstance(col, pa.Array):
        return [(0, col)]
    out, start = [], 0
    for chunk in col.chunks:
        out.append((start, chunk))
        start += len(chunk)
    return out


def first_non_finite(col: pa.ChunkedArray | pa.Array) -> tuple[int, float] | None:
    """``(row, value)`` of the first NaN or infinite float in ``col`` (nested ones too)."""
    best: tuple[int, float] | None = None
    for start, chunk in _chunks(col):
        for leaf in _float_leaves(chunk):
            arr = leaf.array
            if pc.all(pc.is_finite(arr if arr.type != pa.float16() else arr.cast(pa.float32()))).as_py() is not False:
                continue  # the common case, in two kernels: nothing to find
            bad = np.flatnonzero(~_finite_mask(arr))
            if len(bad):
                i = int(bad[0])
                row = start + leaf.row(i)
                if best is None or row < best[0]:
                    best = (row, arr[i].as_py())
        if best is not None:
            return best
    return None


def first_overflow(before: pa.ChunkedArray, after: pa.ChunkedArray) -> tuple[int, float] | None:
    """``(row, value)`` of the first value finite before a cast and infinite after it (a
    float too large for a narrower float type)."""
    for (start, a), (_, b) in zip(_chunks(before), _chunks(after)):
        a_leaves, b_leaves = list(_float_leaves(a)), list(_float_leaves(b))
        if len(a_leaves) != len(b_leaves):  # an integer became a float: exact, or the cast refused it
            continue
        for la, lb in zip(a_leaves, b_leaves):
            bad = np.flatnonzero(_finite_mask(la.array) & ~_finite_mask(lb.array))
            if len(bad):
                i = int(bad[0])
                return start + la.row(i), la.array[i].as_py()
    return None


CONTENT_HASH_SCHEME = "v1"  # bump if content_hash changes: stored hashes of another scheme are not compared


def content_hash(table: pa.Table) -> str:
    """A digest of ``table``'s values (``"v1:<hex>"``): the same rows give the same digest
    in any process, whatever their chunks, slices, bytes under nulls or dictionary
    encoding; other rows (or the same in another order) give another. It walks the
    columns as :func:`first_null` does, hashing each array's type, length, nulls and
    values (a list's lengths, a leaf's data), so it costs a pass over the bytes."""
    h = hashlib.sha256()  # hardware-accelerated (SHA extensions) on most CPUs: ~1.5 GB/s
    h.update(f"{table.num_rows};".encode())
    try:
        for name, col in zip(table.column_names, table.columns):
            arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
            for node in _nodes(_Node(arr, pa.field(name, arr.type))):
                _hash_node(h.update, name, node)
    except (pa.ArrowException, NotImplementedError, ValueError, TypeError):
        # A type the walk has no kernel for: its bytes as stored (an exact retry still matches).
        h = hashlib.sha256(b"ipc;")
        for batch in table.combine_chunks().to_batches():
            h.update(batch.serialize())
    return f"{CONTENT_HASH_SCHEME}:{h.hexdigest()}"


def _hash_node(update: Callable[[Any], None], name: str, node: _Node) -> None:
    """Feed one array of the walk to a hash: its place, type, length and nulls, then a
    list's lengths or a leaf's values (a struct has only its fields, which come next)."""
    a = node.array
    update(f"{name!r}{node.path}{a.type}|{len(a)}|{a.null_count};".encode())
    if a.null_count:
        update(np.packbits(pc.is_valid(a).to_numpy(zero_copy_only=False)).tobytes())
    if pa.types.is_map(a.type):  # no list kernels for a map
        a = a.cast(pa.list_(pa.struct([a.type.key_field, a.type.item_field])))
    if _kind(a.type) == "list":
        update(pc.fill_null(pc.list_value_length(a), 0).to_numpy(zero_copy_only=False).astype(np.int64))
    elif not pa.types.is_struct(a.type):
        if pa.types.is_string_view(a.type) or pa.types.is_binary_view(a.type):
            a = a.cast(pa.large_binary())  # views have no filter kernel, nor one layout
        for part in _value_bytes(pc.drop_null(a) if a.null_count else a):
            update(part)


def _value_bytes(arr: pa.Array) -> Iterator[bytes | memoryview]:
    """The values of a leaf array without nulls, as bytes that depend on the values alone
    (not on an offset into shared buffers)."""
    t = arr.type
    if pa.types.is_null(t) or len(arr) == 0:
        return
    if pa.types.is_boolean(t):
        yield arr.to_numpy(zero_copy_only=False).tobytes()
    elif _kind(t) in ("text", "bytes") and not pa.types.is_fixed_size_binary(t):
        large = pa.types.is_large_string(t) or pa.types.is_large_binary(t)
        offsets = np.frombuffer(arr.buffers()[1], np.int64 if large else np.int32)[arr.offset : arr.offset + len(arr) + 1]
        yield np.diff(offsets).astype(np.int64).tobytes()
        data = arr.buffers()[2]
        if data is not None:
            yield memoryview(data)[offsets[0] : offsets[-1]]
    elif fixed_width(t) and arr.buffers()[1] is not None:
        w = t.bit_width // 8
        yield memoryview(arr.buffers()[1])[arr.offset * w : (arr.offset + len(arr)) * w]
    else:  # unions, run-end encoded, extension types...: their IPC bytes (exact retries still match)
        yield pa.record_batch([arr], names=["v"]).serialize().to_pybytes()


def fixed_width(t: pa.DataType) -> bool:
    """Whether ``t`` is a flat type of whole bytes per value (numbers, timestamps, decimals, ...)."""
    try:
        return t.bit_width % 8 == 0 and t.num_fields == 0 and not pa.types.is_dictionary(t)
    except ValueError:
        return False


def row_nbytes(table: pa.Table) -> np.ndarray:
    """The data bytes of each row (values and variable-length payloads; validity bitmaps
    and offsets not counted)."""
    sizes = np.zeros(table.num_rows, np.int64)
    for col in table.columns:
        arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        sizes += _array_row_bytes(arr)
    return sizes


def _array_row_bytes(arr: pa.Array) -> np.ndarray:
    t = arr.type
    n = len(arr)
    if pa.types.is_dictionary(t):
        return _array_row_bytes(arr.dictionary.take(arr.indices))
    if pa.types.is_fixed_size_list(t):
        child = _array_row_bytes(arr.values.slice(arr.offset * t.list_size, n * t.list_size))
        return child.reshape(n, t.list_size).sum(axis=1) if n else np.zeros(0, np.int64)
    if (
        pa.types.is_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_string(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_string_view(t)
        or pa.types.is_binary_view(t)
    ):
        if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
            arr = arr.cast(pa.large_binary())  # binary_length has no view kernel
        return pc.binary_length(arr).fill_null(0).to_numpy().astype(np.int64)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
        offsets = arr.offsets.to_numpy()
        child = _array_row_bytes(arr.values)
        cum = np.concatenate([[0], np.cumsum(child)])
        return (cum[offsets[1:]] - cum[offsets[:-1]]).astype(np.int64)  # .values ignores the slice: absolute offsets
    if pa.types.is_struct(t):
        out = np.zeros(n, np.int64)
        for i in range(t.num_fields):
            out += _array_row_bytes(arr.field(i))
        return out
    try:
        width = t.bit_width // 8 if t.bit_width >= 8 else 1
    except ValueError:  # unions, list views, run-end encoded...: cannot be measured per row
        raise ValueError(f"row sizes of type {t} cannot be measured; drop max_row_bytes or use another type") from None
    return np.full(n, width, np.int64)


def check_limits(table: pa.Table, source: str, max_row_bytes: int | None, max_table_bytes: int | None) -> None:
    """Refuse a table, or a row of it, larger than the source allows."""
    if max_table_bytes is not None and table.nbytes > max_table_bytes:
        raise ValueError(f"source {source!r}: the table has {table.nbytes} bytes, over the limit of {max_table_bytes}")
    if max_row_bytes is not None:
        sizes = row_nbytes(table)
        big = np.flatnonzero(sizes > max_row_bytes)
        if len(big):
            raise ValueError(
                f"source {source!r}: row {int(big[0])} has {int(sizes[big[0]])} bytes, over the limit of "
                f"{max_row_bytes} ({len(big)} row(s) too large)"
            )
