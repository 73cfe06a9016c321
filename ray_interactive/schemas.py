"""Checking ingested Arrow tables against a source's schema."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc


def conform(table: pa.Table | pa.RecordBatch, schema: pa.Schema, source: str) -> pa.Table:
    """Return ``table`` cast to ``schema``, or raise ``ValueError`` naming the problem.

    Columns may come in any order. Safe casts (int32 -> int64, say) are done; lossy ones
    (float -> int with a fraction, int overflow) are refused. Nulls in a non-nullable
    column, missing and extra columns, and empty tables are refused.
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    if not isinstance(table, pa.Table):
        raise ValueError(f"source {source!r}: expected a pyarrow Table or RecordBatch, got {type(table).__name__}")
    if table.num_rows == 0:
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
