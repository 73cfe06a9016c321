"""Checking ingested Arrow tables against a source's schema."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def conform(table: pa.Table | pa.RecordBatch, schema: pa.Schema, source: str, allow_empty: bool = False) -> pa.Table:
    """Return ``table`` cast to ``schema``, or raise ``ValueError`` naming the problem.

    Columns may come in any order. Safe casts (int32 -> int64, say) are done; lossy ones
    (float -> int with a fraction, int overflow) are refused. Nulls in a non-nullable
    column, missing and extra columns, and empty tables are refused.
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not isinstance(table, pa.Table):
        raise ValueError(f"source {source!r}: expected a pyarrow Table or RecordBatch, got {type(table).__name__}")
    if table.num_rows == 0 and not allow_empty:
        raise ValueError(f"source {source!r}: the table is empty")
    names = table.column_names
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"source {source!r}: duplicate column(s) {', '.join(dupes)}")
    missing = [f.name for f in schema if f.name not in names]
    if missing:
        raise ValueError(f"source {source!r}: missing column(s) {', '.join(missing)}")
    extra = [n for n in names if schema.get_field_index(n) < 0]
    if extra:
        raise ValueError(f"source {source!r}: unexpected column(s) {', '.join(extra)}")
    columns = []
    for field in schema:
        col = table.column(field.name)
        if not col.type.equals(field.type):
            try:
                col = pc.cast(col, field.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise ValueError(
                    f"source {source!r}: column {field.name!r} has type {col.type}, expected {field.type} "
                    f"({str(e).splitlines()[0]})"
                ) from None
        if not field.nullable and col.null_count:
            raise ValueError(f"source {source!r}: column {field.name!r} has {col.null_count} null(s) but is not nullable")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)


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
