"""The data buffer: mixture sampling, determinism, epochs and ingestion checks (no Ray)."""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pytest

from ray_interactive.core.task import DataSource
from ray_interactive.data.buffer import DataBuffer

B_OFFSET = 1_000_000


def table(ids: np.ndarray | range, extra: str | None = None) -> pa.Table:
    ids = np.asarray(ids, np.int64)
    cols = {"id": pa.array(ids), "v": pa.array(ids.astype(np.float32) * 0.5)}
    if extra:
        cols[extra] = pa.array(np.zeros(len(ids), np.float64))
    return pa.table(cols)


def two_sources(wa: float = 0.7, wb: float = 0.3, policy_a: str = "uniform", seed: int = 0) -> DataBuffer:
    a = DataSource("a", table(range(1000), extra="only_a"), weight=wa, policy=policy_a)  # type: ignore[arg-type]
    b = DataSource("b", table(range(B_OFFSET, B_OFFSET + 300), extra="only_b"), weight=wb)
    return DataBuffer([a, b], seed=seed)


def fraction_from_a(buf: DataBuffer, batches: int, batch_size: int = 64) -> float:
    chunk = buf.next_batches(batch_size, batches)
    assert chunk is not None
    ids = chunk.table.column("id").to_numpy()
    assert len(ids) == batches * batch_size
    return float(np.mean(ids < B_OFFSET))


def test_batches_hold_only_the_columns_every_source_shares() -> None:
    buf = two_sources()
    assert buf.batch_columns == ["id", "v"]
    chunk = buf.next_batches(16, 3)
    assert chunk is not None
    assert chunk.table.column_names == ["id", "v"]
    assert chunk.table.num_rows == 48 and chunk.batch_size == 16
    assert len(chunk.positions) == 3 and len(chunk.meta) == 3
    assert all(sum(m["counts"].values()) == 16 for m in chunk.meta)


def test_mixture_proportions_match_the_weights() -> None:
    buf = two_sources(0.7, 0.3)
    assert fraction_from_a(buf, 200) == pytest.approx(0.7, abs=0.03)


def test_rows_come_from_their_own_source() -> None:
    buf = two_sources()
    chunk = buf.next_batches(64, 20)
    assert chunk is not None
    t = chunk.table
    ids = t.column("id").to_numpy()
    assert np.all(((ids >= 0) & (ids < 1000)) | ((ids >= B_OFFSET) & (ids < B_OFFSET + 300)))
    np.testing.assert_allclose(t.column("v").to_numpy(), ids.astype(np.float32) * 0.5)


def test_set_mixture_takes_effect_on_the_next_batch() -> None:
    buf = two_sources(0.5, 0.5)
    assert 0.0 < fraction_from_a(buf, 10) < 1.0
    assert buf.set_mixture({"a": 0.0}) == {"a": 0.0, "b": 0.5}
    assert fraction_from_a(buf, 5) == 0.0
    buf.set_mixture({"a": 3.0, "b": 1.0})
    assert fraction_from_a(buf, 200) == pytest.approx(0.75, abs=0.03)


def test_set_mixture_rejects_unknown_sources_and_all_zero() -> None:
    buf = two_sources()
    with pytest.raises(ValueError, match="unknown data source"):
        buf.set_mixture({"c": 1.0})
    with pytest.raises(ValueError, match="at least one source must keep a weight > 0"):
        buf.set_mixture({"a": 0.0, "b": 0.0})
    assert buf.mixture() == {"a": 0.7, "b": 0.3}


def test_empty_source_gets_zero_weight_and_the_others_are_renormalised() -> None:
    schema = table(range(1)).schema
    base = DataSource("base", table(range(500)), weight=1.0)
    live = DataSource("live", schema=schema, weight=3.0)
    buf = DataBuffer([base, live], seed=1)
    chunk = buf.next_batches(32, 10)
    assert chunk is not None
    assert all(m["counts"] == {"base": 32} for m in chunk.meta)
    buf.ingest(table(range(B_OFFSET, B_OFFSET + 50)), "live")
    chunk = buf.next_batches(64, 200)
    assert chunk is not None
    live_frac = float(np.mean(chunk.table.column("id").to_numpy() >= B_OFFSET))
    assert live_frac == pytest.approx(0.75, abs=0.03)
    assert chunk.meta[0]["live_rows"] > 0 and chunk.meta[0]["newest_time"] <= time.time()


def test_next_batches_is_none_when_every_weighted_source_is_empty() -> None:
    schema = table(range(1)).schema
    buf = DataBuffer([DataSource("live", schema=schema), DataSource("live2", schema=schema)])
    assert buf.next_batches(8) is None
    base = DataSource("base", table(range(10)), weight=0.0)
    buf2 = DataBuffer([base, DataSource("live", schema=schema, weight=1.0)])
    assert buf2.next_batches(8) is None  # the source with rows has weight 0
    buf2.ingest(table(range(3)), "live")
    chunk = buf2.next_batches(8)
    assert chunk is not None and set(chunk.table.column("id").to_pylist()) <= {0, 1, 2}


@pytest.mark.parametrize("policy_a", ["uniform", "epoch"])
def test_restoring_a_position_draws_the_same_batches_again(policy_a: str) -> None:
    buf = two_sources(policy_a=policy_a)
    buf.next_batches(64, 7)  # move somewhere in the middle
    pos = buf.position()
    first = buf.next_batches(64, 30)
    buf.restore(pos)
    second = buf.next_batches(64, 30)
    assert first is not None and second is not None
    assert first.table.equals(second.table)
    assert first.positions[-1]["batches"] == second.positions[-1]["batches"] == 37
    # a position taken from a batch continues right after it
    buf.restore(first.positions[9])
    third = buf.next_batches(64, 20)
    assert third is not None
    assert third.table.equals(first.table.slice(10 * 64))


def test_same_seed_same_batches_different_seed_different_batches() -> None:
    t1 = two_sources(seed=3).next_batches(64, 5)
    t2 = two_sources(seed=3).next_batches(64, 5)
    t3 = two_sources(seed=4).next_batches(64, 5)
    assert t1 is not None and t2 is not None and t3 is not None
    assert t1.table.equals(t2.table)
    assert not t1.table.equals(t3.table)


@pytest.mark.parametrize(("rows", "batch_size"), [(640, 64), (100, 64), (37, 8)])
def test_epoch_policy_visits_every_row_once_per_epoch(rows: int, batch_size: int) -> None:
    buf = DataBuffer([DataSource("base", table(range(rows)), policy="epoch")], seed=5)
    epochs = 3
    total = rows * epochs
    n_batches = -(-total // batch_size)
    chunk = buf.next_batches(batch_size, n_batches)
    assert chunk is not None
    ids = chunk.table.column("id").to_numpy()[:total]
    for e in range(epochs):
        assert sorted(ids[e * rows : (e + 1) * rows].tolist()) == list(range(rows))
    # epochs are shuffled differently
    assert ids[:rows].tolist() != ids[rows : 2 * rows].tolist()


def test_epoch_policy_inside_a_mixture_still_covers_each_row_once() -> None:
    buf = two_sources(0.5, 0.5, policy_a="epoch")
    chunk = buf.next_batches(64, 80)
    assert chunk is not None
    ids = chunk.table.column("id").to_numpy()
    from_a = ids[ids < B_OFFSET]
    assert len(from_a) >= 2000
    assert sorted(from_a[:1000].tolist()) == list(range(1000))
    assert sorted(from_a[1000:2000].tolist()) == list(range(1000))


# -- ingestion ---------------------------------------------------------------------------


@pytest.fixture
def live_buffer() -> DataBuffer:
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("v", pa.float32())])
    return DataBuffer([DataSource("live", schema=schema)])


def test_ingest_accepts_rows_and_returns_their_sequence_range(live_buffer: DataBuffer) -> None:
    out = live_buffer.ingest(pa.table({"id": pa.array([1, 2, 3], pa.int64()), "v": pa.array([0.1, 0.2, 0.3], pa.float32())}), "live")
    assert {k: out[k] for k in ("source", "rows", "first", "last", "duplicate")} == {
        "source": "live", "rows": 3, "first": 0, "last": 2, "duplicate": False
    }
    out = live_buffer.ingest(pa.table({"v": pa.array([1.0], pa.float32()), "id": pa.array([9], pa.int64())}), "live")
    assert (out["rows"], out["first"], out["last"]) == (1, 3, 3)  # columns in any order
    assert live_buffer.sources()["live"]["rows"] == 4


def test_ingest_does_a_safe_cast(live_buffer: DataBuffer) -> None:
    live_buffer.ingest(pa.table({"id": pa.array([1, 2], pa.int32()), "v": pa.array([0.5, 1.5], pa.float64())}), "live")
    chunk = live_buffer.next_batches(4)
    assert chunk is not None
    assert chunk.table.schema.field("id").type == pa.int64()
    assert chunk.table.schema.field("v").type == pa.float32()
    assert set(chunk.table.column("id").to_pylist()) <= {1, 2}


def test_ingest_accepts_a_record_batch(live_buffer: DataBuffer) -> None:
    batch = pa.RecordBatch.from_pydict({"id": pa.array([7], pa.int64()), "v": pa.array([1.0], pa.float32())})
    assert live_buffer.ingest(batch, "live")["rows"] == 1


@pytest.mark.parametrize(
    ("make", "source", "message"),
    [
        (lambda: pa.table({"id": [1], "v": [1.0]}), "nope", "unknown source 'nope'; sources: live"),
        (lambda: pa.table({"id": pa.array([1], pa.int64())}), "live", "missing column(s) v"),
        (lambda: pa.table({"id": [1], "v": [1.0], "w": [2.0]}), "live", "unexpected column(s) w"),
        (lambda: pa.table({"id": [1.5, 2.0], "v": [1.0, 2.0]}), "live", "column 'id' has type double, expected int64"),
        (lambda: pa.table({"id": pa.array([1, None], pa.int64()), "v": [1.0, 2.0]}), "live", "column 'id' has 1 null(s) but is not nullable"),
        (lambda: pa.table({"id": pa.array([], pa.int64()), "v": pa.array([], pa.float32())}), "live", "the table is empty"),
        (lambda: pa.table({"id": ["x"], "v": [1.0]}), "live", "column 'id' has type string, expected int64"),
    ],
)
def test_ingest_rejects_bad_tables_and_stores_nothing(live_buffer: DataBuffer, make, source: str, message: str) -> None:  # noqa: ANN001
    live_buffer.ingest(pa.table({"id": pa.array([1], pa.int64()), "v": pa.array([1.0], pa.float32())}), "live")
    with pytest.raises(ValueError) as e:
        live_buffer.ingest(make(), source)
    assert message in str(e.value)
    info = live_buffer.sources()["live"]
    assert info["rows"] == 1
    chunk = live_buffer.next_batches(50)
    assert chunk is not None and set(chunk.table.column("id").to_pylist()) == {1}
    if source == "live":
        assert info["rejected"] == 1


def test_lossy_integer_overflow_is_rejected(live_buffer: DataBuffer) -> None:
    schema = pa.schema([pa.field("n", pa.int8())])
    buf = DataBuffer([DataSource("s", schema=schema)])
    with pytest.raises(ValueError, match="column 'n' has type int64, expected int8"):
        buf.ingest(pa.table({"n": pa.array([1000], pa.int64())}), "s")
    assert buf.ingest(pa.table({"n": pa.array([100], pa.int64())}), "s")["rows"] == 1


def test_sources_without_a_shared_column_are_refused() -> None:
    with pytest.raises(ValueError, match="share no column"):
        DataBuffer([DataSource("a", pa.table({"x": [1]})), DataSource("b", pa.table({"y": [1]}))])


def test_shared_column_with_different_types_is_refused() -> None:
    with pytest.raises(ValueError, match="column 'x' has different types"):
        DataBuffer([DataSource("a", pa.table({"x": [1]})), DataSource("b", pa.table({"x": [1.0]}))])


def test_duplicate_source_and_bad_names_are_refused() -> None:
    buf = DataBuffer([DataSource("a", pa.table({"x": [1]}))])
    with pytest.raises(ValueError, match="already registered"):
        buf.register(DataSource("a", pa.table({"x": [2]})))
    with pytest.raises(ValueError, match="not a valid name"):
        buf.register(DataSource("bad name", pa.table({"x": [2]})))


def test_ranks_draw_disjoint_shares_of_an_epoch_and_of_fresh_rows_each_with_its_own_rng() -> None:
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False)])
    table = pa.table({"id": np.arange(40, dtype=np.int64)}, schema=schema)
    buf = DataBuffer([DataSource("base", table, policy="epoch")], seed=1)
    ids = []
    for rank in range(2):
        chunk = buf.next_batches(10, 2, position=buf.initial_position(rank, 2))
        assert chunk is not None
        ids.append(set(chunk.table.column("id").to_pylist()))
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 40  # one epoch, split between the ranks
    live = DataBuffer([DataSource("live", schema=schema, policy="fresh")], seed=1)
    live.ingest(pa.table({"id": np.arange(20, dtype=np.int64)}, schema=schema), "live")
    got = [live.next_batches(5, 1, position=live.initial_position(r, 2)).table.column("id").to_pylist() for r in range(2)]
    assert got == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]  # fresh rows: rank r takes r, r + 2, ...
    a, b = live.initial_position(0, 2), live.initial_position(1, 2)
    assert a["rng"] != b["rng"] and live.initial_position(0, 1)["rng"] == DataBuffer([], seed=1).position()["rng"]
    with pytest.raises(ValueError, match="rank 2"):
        live.initial_position(2, 2)
