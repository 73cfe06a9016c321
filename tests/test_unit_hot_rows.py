"""The in-memory stores of a live source's recent rows (`ray_interactive.data.hot`)."""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ray_interactive.core.config import BufferConfig
from ray_interactive.core.task import DataSource
from ray_interactive.data.buffer import DataBuffer
from ray_interactive.data.hot import BlockRows, ColumnRows, hot_rows

SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False),
    ("x", pa.float32()),
    ("half", pa.float16()),
    ("when", pa.timestamp("ms", tz="UTC")),
    ("price", pa.decimal128(9, 2)),
    ("key", pa.binary(3)),
    ("vec", pa.list_(pa.float32(), 4)),
    ("grid", pa.list_(pa.list_(pa.int8(), 2), 2)),
    ("text", pa.string()),
    ("blob", pa.large_binary()),
    ("tokens", pa.list_(pa.int32())),
    ("pairs", pa.large_list(pa.list_(pa.float64(), 2))),
])


def table(start: int, n: int) -> pa.Table:
    rng = np.random.default_rng(start)
    ids = list(range(start, start + n))
    return pa.table({
        "id": ids,
        "x": rng.random(n).astype(np.float32),
        "half": rng.random(n).astype(np.float16),
        "when": [dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i) for i in ids],
        "price": [decimal.Decimal(i) / 100 for i in ids],
        "key": [f"{i % 1000:03d}".encode() for i in ids],
        "vec": [[i, i + 0.5, -i, 0.0] for i in ids],
        "grid": [[[i % 100, 1], [2, -(i % 100)]] for i in ids],
        "text": ["é" * (i % 7) + str(i) for i in ids],
        "blob": [bytes([i % 256]) * (i % 5) for i in ids],
        "tokens": [list(range(i % 6)) for i in ids],
        "pairs": [[[i, 1.0]] * (i % 3) for i in ids],
    }, schema=SCHEMA)


def test_columns_of_our_own_hold_every_type_a_training_row_has_and_give_rows_back_exactly() -> None:
    store = hot_rows(SCHEMA, allow_nulls=False, merge_bytes=1 << 20, first=100)
    assert isinstance(store, ColumnRows)
    parts = [table(100, 5), table(105, 1), table(106, 40).slice(3, 20), pa.concat_tables([table(126, 4), table(130, 6)])]
    parts[1] = parts[1].set_column(8, "text", pa.array([""], pa.string()))  # only empty strings: no data buffer
    parts[1] = parts[1].set_column(9, "blob", pa.array([b""], pa.large_binary()))
    for part in parts:  # one record batch, sliced arrays and several chunks
        store.append(part)
    want = pa.concat_tables(parts).combine_chunks()
    store.append(SCHEMA.empty_table())
    assert store.rows == want.num_rows == 36 and store.first == 100
    idx = np.random.default_rng(0).integers(100, 136, 64)
    got = store.take(idx, SCHEMA)
    assert got.schema.equals(SCHEMA)  # the string/list columns cast back from the large types
    assert got.equals(want.take(idx - 100))
    sub = pa.schema([SCHEMA.field("text"), SCHEMA.field("id").with_nullable(True)])  # a batch schema: a subset
    assert store.take(idx[:5], sub).equals(want.select(["text", "id"]).cast(sub).take(idx[:5] - 100))
    assert store.nbytes > 36 * 60  # at least the fixed-width bytes


@pytest.mark.parametrize("t", [pa.bool_(), pa.struct([("a", pa.int8())]), pa.dictionary(pa.int8(), pa.string()),
                               pa.list_(pa.string()), pa.map_(pa.string(), pa.int8())])
def test_a_schema_the_columns_cannot_hold_or_nulls_keep_blocks(t: pa.DataType) -> None:
    assert isinstance(hot_rows(pa.schema([("v", t)]), allow_nulls=False, merge_bytes=1 << 20), BlockRows)
    assert isinstance(hot_rows(SCHEMA, allow_nulls=True, merge_bytes=1 << 20), BlockRows)


def test_a_table_with_nulls_is_refused_before_any_column_changes() -> None:
    store = ColumnRows(pa.schema([("a", pa.int64()), ("b", pa.string())]))
    store.append(pa.table({"a": [1], "b": ["x"]}))
    with pytest.raises(ValueError, match="nulls"):
        store.append(pa.table({"a": [2], "b": [None]}, schema=store.schema))
    assert store.rows == 1 and store.take(np.array([0]), store.schema).to_pylist() == [{"a": 1, "b": "x"}]
    items = ColumnRows(pa.schema([("v", pa.list_(pa.float32()))]))
    with pytest.raises(ValueError, match="nulls"):
        items.append(pa.table({"v": [[1.0, None]]}, schema=items.schema))  # a null item, not a null row
    assert items.rows == 0


def test_eviction_drops_the_oldest_rows_frees_their_memory_and_keeps_the_rest_exact() -> None:
    store = ColumnRows(SCHEMA)
    parts = [table(i * 50, 50) for i in range(200)]
    for part in parts:
        store.append(part)
    want = pa.concat_tables(parts).combine_chunks()
    full = store.nbytes
    assert store.evict_bound(1 << 30, limit=0) is None  # nothing durable yet: nothing to drop
    bound = store.evict_bound(full // 10, limit=10_000)
    assert bound is not None and 0 < bound < 10_000
    assert abs(store._bytes(0, bound) - full / 10) < full / 100  # about the bytes asked for
    store.drop_before(bound)
    assert store.first == bound and store.rows == 10_000 - bound
    assert store._lo == bound and store.nbytes == full - store._bytes(0, bound)  # a tenth dropped: not copied yet
    capacity = sum(len(n.data.a) for n in store._nodes.values() if hasattr(n, "data"))
    for limit in (4_000, 7_000, 9_950):  # past half: the kept rows are copied, the rest freed
        b = store.evict_bound(1 << 30, limit=limit)
        assert b == limit
        store.drop_before(b)
    assert store._lo < 9_950 and store.first == 9_950 and store.rows == 50
    assert sum(len(n.data.a) for n in store._nodes.values() if hasattr(n, "data")) < capacity
    idx = np.arange(9_950, 10_000)[::-1]
    assert store.take(idx, SCHEMA).equals(want.take(idx))
    store.append(table(10_000, 10))  # and it goes on growing after a compaction
    assert store.take(np.array([10_009, 9_950]), SCHEMA).column("id").to_pylist() == [10_009, 9_950]


def test_blocks_evict_whole_blocks_only() -> None:
    store = BlockRows(merge_bytes=1 << 30)
    for i in range(4):
        store.append(table(i * 10, 10))
    assert store.evict_bound(1, limit=39) is None  # its one block ends at 40
    assert store.evict_bound(1, limit=40) == 40
    store.drop_before(40)
    assert store.rows == 0 and store.nbytes == 0 and store.first == 40


def test_a_string_column_past_its_offsets_reach_moves_the_source_to_blocks_with_every_row_kept(tmp_path: Path) -> None:
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    buf = DataBuffer([DataSource("live", schema=schema)], directory=tmp_path, config=BufferConfig(fsync=False))

    def part(start: int) -> pa.Table:
        return pa.table({"id": range(start, start + 10), "text": [f"text {i}" for i in range(start, start + 10)]},
                        schema=schema)

    buf.ingest(part(0), "live")
    live = buf._sources["live"]
    assert isinstance(live.hot, ColumnRows)
    live.hot._nodes["text"].limit = 150  # type: ignore[union-attr]  # (2 GiB in a real run)
    buf.ingest(part(10), "live")  # 140 bytes of text: still fits
    assert isinstance(live.hot, ColumnRows)
    buf.ingest(part(20), "live")
    assert isinstance(live.hot, BlockRows) and live.hot.rows == 30
    buf.ingest(part(30), "live")
    assert buf.read("live").equals(pa.concat_tables([part(i) for i in (0, 10, 20, 30)]))
    idx = np.array([39, 0, 15, 25])
    assert live.take(idx, buf.batch_schema).column("text").to_pylist() == [f"text {i}" for i in idx]


def test_a_column_grows_in_place_when_no_view_is_held_and_by_a_copy_when_one_is() -> None:
    from ray_interactive.data.hot import _Array

    col = _Array(np.int64)
    col.extend(np.arange(10_000))
    first_map = col._map
    col.extend(np.arange(10_000, 50_000))  # past its capacity, nothing else holds it: mremap
    assert col._map is first_map and col.n == 50_000 and (col.a[: col.n] == np.arange(50_000)).all()
    held = col.buffer(0, 50_000)  # a view, as a draw's record batch holds one
    col.extend(np.arange(50_000, 200_000))  # cannot move pages under a view: a copy into a new map
    assert col._map is not first_map and (col.a[: col.n] == np.arange(200_000)).all()
    assert (np.frombuffer(held, np.int64) == np.arange(50_000)).all()  # the old view still reads right
