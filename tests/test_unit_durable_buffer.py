"""The durable data buffer without Ray: segments on disk, recovery, exactly-once ingest,
torn tails, the memory cap, static sources from files, sampling policies, determinism."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_interactive.core.config import BufferConfig
from ray_interactive.core.task import DataSource
from ray_interactive.data.buffer import DataBuffer
from ray_interactive.data.hot import BlockRows, ColumnRows
from ray_interactive.data.schemas import content_hash

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("blob", pa.binary())])


def rows(start: int, n: int, blob: int = 16) -> pa.Table:
    ids = np.arange(start, start + n, dtype=np.int64)
    return pa.table({"id": ids, "blob": [b"x" * blob] * n}, schema=SCHEMA)


def live_buffer(path: Path, seed: int = 0, policy: str = "uniform", base: bool = False, **cfg: object) -> DataBuffer:
    sources = [DataSource("live", schema=SCHEMA, policy=policy)]  # type: ignore[arg-type]
    if base:
        sources.insert(0, DataSource("base", rows(-1000, 1000), weight=1.0))
    return DataBuffer(sources, seed=seed, directory=path, config=BufferConfig(**cfg))  # type: ignore[arg-type]


def all_ids(buf: DataBuffer, source: str = "live") -> np.ndarray:
    return buf.read(source, columns=["id"]).column("id").to_numpy()


def segment_files(path: Path) -> list[Path]:
    return sorted((path / "live").glob("seg-*.arrow"))


def test_acknowledged_rows_are_on_disk_and_a_new_buffer_recovers_them_in_order(tmp_path: Path) -> None:
    buf = live_buffer(tmp_path)
    acks = [buf.ingest(rows(i * 10, 10), "live", batch_id=f"b{i}") for i in range(5)]
    assert [(a["first"], a["last"]) for a in acks] == [(i * 10, i * 10 + 9) for i in range(5)]
    # No close(): as after a crash. A fresh buffer reads the segments back.
    again = live_buffer(tmp_path)
    assert again.sources()["live"]["rows"] == 50
    np.testing.assert_array_equal(all_ids(again), np.arange(50))
    # The files are plain Arrow IPC streams.
    table = pa.ipc.open_stream(pa.memory_map(str(segment_files(tmp_path)[0]))).read_all()
    assert table.num_rows == 50 and table.schema.equals(SCHEMA)


def test_a_repeated_batch_id_is_acknowledged_without_storing_twice_even_after_recovery(tmp_path: Path) -> None:
    buf = live_buffer(tmp_path)
    first = buf.ingest(rows(0, 3), "live", batch_id="retry-me")
    dup = buf.ingest(rows(0, 3), "live", batch_id="retry-me")
    assert dup["duplicate"] and not first["duplicate"]
    assert (dup["first"], dup["last"], dup["rows"]) == (0, 2, 3)
    assert buf.sources()["live"]["rows"] == 3
    again = live_buffer(tmp_path)
    assert again.ingest(rows(0, 3), "live", batch_id="retry-me")["duplicate"]
    assert again.sources()["live"]["rows"] == 3
    assert again.ingest(rows(3, 1), "live", batch_id="next")["first"] == 3


def test_a_reused_batch_id_with_other_rows_is_refused_and_stores_nothing_even_after_recovery(tmp_path: Path) -> None:
    buf = live_buffer(tmp_path)
    buf.ingest(rows(0, 20), "live", batch_id="b7")
    size = segment_files(tmp_path)[0].stat().st_size
    for reopened in (False, True):
        if reopened:
            buf = live_buffer(tmp_path)  # no close(): as after a crash; the ids come back from the segments
        with pytest.raises(ValueError) as e:
            buf.ingest(rows(100, 20), "live", batch_id="b7")
        message = str(e.value)
        assert message.startswith("batch_id 'b7' was already used for different rows (20 rows acknowledged at 20")
        assert message.endswith(" UTC); nothing was stored - send new rows with a new batch_id")
        assert buf.sources()["live"]["rows"] == 20 and segment_files(tmp_path)[0].stat().st_size == size
        assert buf.stats().rejected == 1 and "different rows" in buf.stats().rejections[-1]["message"]
        # The same rows again are a retry, however they come: another chunking, a slice, a cast.
        ids = np.arange(-5, 40, dtype=np.int32)
        same = [rows(0, 20), pa.concat_tables([rows(0, 7), rows(7, 13)]), rows(-5, 45).slice(5, 20),
                pa.table({"id": ids, "blob": [b"x" * 16] * 45}).slice(5, 20)]
        for table in same:
            ack = buf.ingest(table, "live", batch_id="b7")
            assert ack["duplicate"] and (ack["first"], ack["rows"]) == (0, 20)
        assert buf.sources()["live"]["rows"] == 20 and segment_files(tmp_path)[0].stat().st_size == size
        with pytest.raises(ValueError, match="already used for different rows"):  # the same rows, another order
            buf.ingest(rows(0, 20).take(np.arange(19, -1, -1)), "live", batch_id="b7")
    assert buf.ingest(rows(20, 1), "live", batch_id="b8")["first"] == 20


def test_a_reused_batch_id_with_other_rows_is_refused_without_a_directory_too() -> None:
    buf = DataBuffer([DataSource("live", schema=SCHEMA)])
    buf.ingest(rows(0, 2), "live", batch_id="m1")
    with pytest.raises(ValueError, match="batch_id 'm1' was already used for different rows"):
        buf.ingest(rows(0, 3), "live", batch_id="m1")
    assert buf.ingest(rows(0, 2), "live", batch_id="m1")["duplicate"]
    assert buf.sources()["live"]["rows"] == 2


def test_segments_of_older_code_without_a_digest_still_load_and_their_ids_stay_retries(tmp_path: Path) -> None:
    sdir = tmp_path / "live"
    sdir.mkdir()
    with open(sdir / "seg-000000000000.arrow", "wb") as f, pa.ipc.new_stream(f, SCHEMA) as w:
        w.write_batch(rows(0, 3).to_batches()[0], custom_metadata={"batch_id": "old", "first": "0", "time": "1.5"})
    buf = live_buffer(tmp_path)
    assert buf.sources()["live"]["rows"] == 3
    # Older code kept no digest of the rows: a re-sent id is taken for a retry, as it was then.
    ack = buf.ingest(rows(50, 5), "live", batch_id="old")
    assert ack["duplicate"] and (ack["first"], ack["rows"]) == (0, 3)
    assert buf.ingest(rows(3, 2), "live", batch_id="new")["first"] == 3
    again = live_buffer(tmp_path)
    np.testing.assert_array_equal(all_ids(again), np.arange(5))
    with pytest.raises(ValueError, match="batch_id 'new' was already used for different rows"):
        again.ingest(rows(0, 2), "live", batch_id="new")


def test_the_digest_of_rows_depends_on_their_values_not_their_layout() -> None:
    def digest(**cols: pa.Array) -> str:
        return content_hash(pa.table(cols))

    ints = pa.array([1, None, 3], pa.int64())
    garbage_under_null = pa.Array.from_buffers(
        pa.int64(), 3, [ints.buffers()[0], pa.py_buffer(np.array([1, 99, 3], np.int64).tobytes())])
    assert digest(v=ints) == digest(v=garbage_under_null) == digest(v=pa.array([0, 1, None, 3]).slice(1))
    words = pa.array(["a", "bb", None, "a"])
    assert digest(w=words) == digest(w=words.dictionary_encode()) == digest(w=pa.array(["z", "a", "bb", None, "a", "q"]).slice(1, 4))
    lists = pa.array([[1, 2], [3]])
    assert digest(l=lists) != digest(l=pa.array([[1], [2, 3]]))  # the same values, other lists
    assert digest(l=lists) != digest(l=pa.array([[1, 2], [4]]))
    assert digest(v=ints) != digest(v=pa.array([1, 0, 3])) != digest(v=pa.array([1, None, 3], pa.int32()))
    assert digest(a=pa.array([1])) != digest(b=pa.array([1]))
    one = pa.table({"m": pa.array([[("k", 1.0)], None], pa.map_(pa.string(), pa.float64())),
                    "s": pa.array([{"a": [1]}, {"a": None}], pa.struct([("a", pa.list_(pa.int64()))]))})
    assert content_hash(one) == content_hash(pa.concat_tables([one.slice(0, 1), one.slice(1)]))


def test_segments_roll_at_their_size_and_recover_contiguously(tmp_path: Path) -> None:
    buf = live_buffer(tmp_path, segment_mb=0.05)  # ~52 KB
    for i in range(40):
        buf.ingest(rows(i * 10, 10, blob=400), "live")  # ~4 KB each
    files = segment_files(tmp_path)
    assert len(files) >= 3
    assert all(f.stat().st_size < 0.05 * 2**20 + 8 * 1024 for f in files)
    again = live_buffer(tmp_path, segment_mb=0.05)
    np.testing.assert_array_equal(all_ids(again), np.arange(400))
    assert again.ingest(rows(400, 1), "live")["first"] == 400


@pytest.mark.parametrize("cut", [1, 7, 100, "garbage"])
def test_a_torn_tail_is_cut_off_and_only_the_unacknowledged_write_is_lost(tmp_path: Path, cut: object) -> None:
    buf = live_buffer(tmp_path)
    for i in range(4):
        buf.ingest(rows(i * 5, 5), "live")
    seg = segment_files(tmp_path)[-1]
    good = seg.stat().st_size
    if cut == "garbage":  # a write that died after a few bytes of noise
        with open(seg, "ab") as f:
            f.write(os.urandom(37))
    else:  # a write of the next batch torn after `cut` bytes
        buf.ingest(rows(20, 5), "live")
        with open(seg, "r+b") as f:
            f.truncate(good + int(cut))  # type: ignore[call-overload]
    again = live_buffer(tmp_path)
    np.testing.assert_array_equal(all_ids(again), np.arange(20))
    assert seg.stat().st_size == good  # the torn bytes are gone from the file
    assert again.ingest(rows(20, 5), "live")["first"] == 20
    np.testing.assert_array_equal(all_ids(live_buffer(tmp_path)), np.arange(25))


def test_memory_cap_keeps_memory_bounded_and_older_rows_sampleable_from_the_map(tmp_path: Path) -> None:
    cap_mb = 0.25
    buf = live_buffer(tmp_path, memory_mb=cap_mb, segment_mb=0.1)
    for i in range(100):
        buf.ingest(rows(i * 10, 10, blob=1000), "live")  # ~1 MB in all
        assert buf.stats().memory_bytes <= cap_mb * 2**20
    s = buf._sources["live"]
    assert s.cold_rows > 500  # most rows are now served from the memory-mapped segments
    chunk = buf.next_batches(256, 20)
    assert chunk is not None
    ids = chunk.table.column("id").to_numpy()
    assert (ids < s.cold_rows).any() and (ids >= s.cold_rows).any()
    np.testing.assert_array_equal(all_ids(buf), np.arange(1000))
    # The cold rows really are views of the files, not heap copies.
    s._cold = s._cold_selected = None
    before = pa.total_allocated_bytes()
    cold = s._cold_table(SCHEMA)
    assert cold.num_rows >= s.cold_rows and pa.total_allocated_bytes() - before < cold.nbytes / 10


def test_rows_cap_is_respected_too(tmp_path: Path) -> None:
    buf = live_buffer(tmp_path, memory_rows=50, segment_mb=0.01)
    writer = buf._sources["live"].writer
    assert writer is not None
    for i in range(30):
        buf.ingest(rows(i * 10, 10, blob=200), "live")
        # Rows of the open segment stay until it is big enough to close (here 10 KB).
        assert buf.stats().sources["live"].memory_rows <= 50 + writer.rows
    np.testing.assert_array_equal(all_ids(buf), np.arange(300))


@pytest.mark.parametrize(
    ("kwargs", "table", "source", "message"),
    [
        ({}, rows(0, 1), "nope", "unknown source 'nope'"),
        ({}, rows(0, 1), "base", "static dataset"),
        ({}, pa.table({"id": [1]}), "live", "missing column(s) blob"),
        ({}, pa.table({"id": pa.array([None], pa.int64()), "blob": [b""]}), "live", "'id' has 1 null"),
        ({"max_row_bytes": 100}, rows(0, 3, blob=200), "live", "row 0 has 208 bytes, over the limit of 100"),
        ({"max_table_bytes": 500}, rows(0, 30), "live", "over the limit of 500"),
    ],
)
def test_rejected_tables_store_nothing_and_say_why(tmp_path: Path, kwargs: dict, table: pa.Table, source: str, message: str) -> None:
    live = DataSource("live", schema=SCHEMA, **kwargs)
    buf = DataBuffer([DataSource("base", rows(-10, 10)), live], directory=tmp_path)
    buf.ingest(rows(0, 2), "live")
    size = segment_files(tmp_path)[0].stat().st_size
    with pytest.raises(ValueError) as e:
        buf.ingest(table, source)
    assert message in str(e.value)
    assert buf.sources()["live"]["rows"] == 2 and segment_files(tmp_path)[0].stat().st_size == size
    stats = buf.stats()
    assert stats.rejected == 1 and message in stats.rejections[-1]["message"]
    assert buf.ingest(rows(2, 1), "live")["first"] == 2  # still serving


def test_bad_batch_ids_are_refused(tmp_path: Path) -> None:
    buf = live_buffer(tmp_path)
    for bad in ["", "a b", "x" * 129, "../etc"]:
        with pytest.raises(ValueError, match="batch_id"):
            buf.ingest(rows(0, 1), "live", batch_id=bad)
    DataBuffer([DataSource("other", schema=SCHEMA), DataSource("live", schema=SCHEMA)], directory=tmp_path / "2").ingest(
        rows(0, 1), "other", batch_id="same"
    )


def test_static_sources_from_parquet_arrow_and_hf_datasets(tmp_path: Path) -> None:
    t = rows(0, 100)
    pq.write_table(t, tmp_path / "base.parquet")
    with pa.OSFile(str(tmp_path / "base.arrow"), "wb") as f, pa.ipc.new_file(f, t.schema) as w:
        w.write_table(t)
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset(t)
    for src in (
        DataSource("base", path=tmp_path / "base.parquet"),
        DataSource("base", path=str(tmp_path / "base.arrow")),
        DataSource("base", dataset=ds),
        DataSource("base", dataset=ds.shuffle(seed=1)),
    ):
        buf = DataBuffer([src])
        assert buf.sources()["base"]["rows"] == 100 and not buf.sources()["base"]["live"]
        assert sorted(all_ids(buf, "base").tolist()) == list(range(100))
    # Arrow IPC files are used in place: the table's buffers live in the memory map.
    before = pa.total_allocated_bytes()
    DataBuffer([DataSource("base", path=tmp_path / "base.arrow")])
    assert pa.total_allocated_bytes() - before < t.nbytes
    with pytest.raises(ValueError, match="does not exist"):
        DataBuffer([DataSource("base", path=tmp_path / "missing.parquet")])
    with pytest.raises(ValueError, match="give one of table, path, dataset"):
        DataSource("base", t, path=tmp_path / "base.parquet")


def test_fresh_first_puts_every_new_row_into_the_next_batches(tmp_path: Path) -> None:
    buf = live_buffer(tmp_path, policy="fresh", base=True)
    buf.set_mixture({"base": 0.5, "live": 0.5})
    buf.ingest(rows(0, 200), "live")
    buf.next_batches(32, 20)  # drain the first backlog
    seen: set[int] = set()
    for i in range(10):
        new = set(range(1000 + i * 8, 1000 + i * 8 + 8))
        buf.ingest(rows(1000 + i * 8, 8), "live")
        chunk = buf.next_batches(64, 1)
        assert chunk is not None
        ids = set(chunk.table.column("id").to_numpy().tolist())
        assert new <= ids, f"new rows {sorted(new - ids)} missing from the next batch"
        seen |= ids
        assert chunk.meta[0]["first_use_times"].size >= 8


def test_recency_weighted_draws_favour_new_rows(tmp_path: Path) -> None:
    src = DataSource("live", schema=SCHEMA, policy="recency", half_life=100)
    buf = DataBuffer([src], directory=tmp_path)
    buf.ingest(rows(0, 2000), "live")
    chunk = buf.next_batches(1000, 10)
    assert chunk is not None
    ids = chunk.table.column("id").to_numpy()
    back = 1999 - ids
    assert np.median(back) == pytest.approx(100, rel=0.15)  # half the draws within one half-life
    assert (ids >= 0).all() and (ids < 2000).all()


def test_same_seed_and_same_ingests_draw_the_same_batches(tmp_path: Path) -> None:
    def run(path: Path, seed: int) -> list[np.ndarray]:
        buf = live_buffer(path, seed=seed, policy="fresh", base=True)
        out = []
        for i in range(6):
            buf.ingest(rows(i * 7, 7), "live")
            chunk = buf.next_batches(16, 2)
            assert chunk is not None
            out.append(chunk.table.column("id").to_numpy())
        return out

    a, b, c = run(tmp_path / "a", 3), run(tmp_path / "b", 3), run(tmp_path / "c", 4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_the_position_carries_fresh_cursors_so_a_restore_redraws_the_same(tmp_path: Path) -> None:
    buf = live_buffer(tmp_path, policy="fresh")
    buf.ingest(rows(0, 100), "live")
    buf.next_batches(10, 3)
    pos = buf.position()
    assert pos["fresh"] == {"live": 30}
    first = buf.next_batches(10, 4)
    buf.restore(pos)
    second = buf.next_batches(10, 4)
    assert first is not None and second is not None
    assert first.table.equals(second.table)


def test_a_source_without_data_yet_is_shown_waiting_and_left_out(tmp_path: Path) -> None:
    buf = live_buffer(tmp_path, base=True)
    info = buf.sources()["live"]
    assert info["waiting_for_data"] and info["effective_weight"] == 0.0
    chunk = buf.next_batches(32, 1)
    assert chunk is not None and chunk.meta[0]["counts"] == {"base": 32}
    buf.ingest(rows(0, 5), "live")
    assert buf.sources()["live"]["effective_weight"] == pytest.approx(0.5)


def test_stats_report_volume_rate_and_ages(tmp_path: Path) -> None:
    buf = live_buffer(tmp_path)
    for i in range(5):
        buf.ingest(rows(i * 10, 10, blob=100), "live")
    s = buf.stats().sources["live"].model_dump()
    assert s["rows"] == 50 and s["bytes"] > 50 * 100 and s["ingest_rows_per_s"] > 0
    time.sleep(0.05)
    chunk = buf.next_batches(8, 1)
    assert chunk is not None
    meta = chunk.meta[0]
    assert meta["live_rows"] == 8 and time.time() - meta["newest_time"] >= 0.05


def test_any_tail_after_the_last_acknowledged_batch_is_dropped(tmp_path: Path) -> None:
    """Random tails: noise, a continuation marker with a huge length, a cut message."""
    rng = np.random.default_rng(0)
    for trial in range(25):
        path = tmp_path / str(trial)
        buf = live_buffer(path)
        for i in range(3):
            buf.ingest(rows(i * 4, 4), "live")
        seg = segment_files(path)[-1]
        good = seg.stat().st_size
        kind = trial % 3
        if kind == 0:
            tail = rng.integers(0, 256, int(rng.integers(1, 400)), dtype=np.uint8).tobytes()
        elif kind == 1:
            tail = b"\xff\xff\xff\xff" + int(rng.integers(1, 2**31 - 1)).to_bytes(4, "little") + os.urandom(int(rng.integers(0, 64)))
        else:
            buf.ingest(rows(12, 4), "live")
            tail = b""
            with open(seg, "r+b") as f:
                f.truncate(good + int(rng.integers(1, seg.stat().st_size - good)))
        with open(seg, "ab") as f:
            f.write(tail)
        again = live_buffer(path)
        np.testing.assert_array_equal(all_ids(again), np.arange(12), err_msg=f"trial {trial}")
        assert seg.stat().st_size == good


def test_a_tiny_memory_cap_does_not_make_a_segment_per_ingest(tmp_path: Path) -> None:
    buf = live_buffer(tmp_path, memory_rows=1)
    for i in range(200):
        buf.ingest(rows(i, 1), "live")
    assert len(segment_files(tmp_path)) == 1
    np.testing.assert_array_equal(all_ids(buf), np.arange(200))


def test_a_failed_fsync_stores_nothing_and_a_restart_recovers_what_was_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    buf = live_buffer(tmp_path, memory_mb=0.01)
    for i in range(3):
        buf.ingest(rows(i * 10, 10, blob=100), "live")

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        buf.ingest(rows(30, 10, blob=100), "live")
    monkeypatch.undo()
    assert buf.sources()["live"]["rows"] == 30
    np.testing.assert_array_equal(all_ids(buf), np.arange(30))  # still served
    # After a failed fsync what is on disk is unknown: no more ingests until a restart.
    with pytest.raises(OSError, match="restart the buffer"):
        buf.ingest(rows(30, 10), "live")
    assert "No space left" in buf.stats().sources["live"].storage_error
    again = live_buffer(tmp_path, memory_mb=0.01)
    np.testing.assert_array_equal(all_ids(again), np.arange(30))
    for i in range(3, 40):
        again.ingest(rows(i * 10, 10, blob=100), "live")
    np.testing.assert_array_equal(all_ids(again), np.arange(400))
    np.testing.assert_array_equal(all_ids(live_buffer(tmp_path)), np.arange(400))


def test_a_damaged_older_segment_is_an_error_not_a_silent_cut(tmp_path: Path) -> None:
    buf = live_buffer(tmp_path, segment_mb=0.01)
    for i in range(20):
        buf.ingest(rows(i * 10, 10, blob=200), "live")
    first = segment_files(tmp_path)[0]
    size = first.stat().st_size
    with open(first, "r+b") as f:
        f.truncate(size - 50)
    with pytest.raises(ValueError, match="not the newest segment"):
        live_buffer(tmp_path, segment_mb=0.01)
    assert first.stat().st_size == size - 50  # left as it was, for a person to look at


def test_epoch_over_a_growing_source_replays_exactly_after_a_restore(tmp_path: Path) -> None:
    src = DataSource("live", schema=SCHEMA, policy="epoch")
    buf = DataBuffer([src], seed=2, directory=tmp_path)
    buf.ingest(rows(0, 10), "live")
    buf.next_batches(4, 1)
    pos = buf.position()
    buf.ingest(rows(10, 5), "live")  # arrives mid-epoch: joins the next epoch
    first = buf.next_batches(4, 3)
    buf.restore(pos)
    again = buf.next_batches(4, 3)
    assert first is not None and again is not None
    assert first.table.equals(again.table)
    ids = first.table.column("id").to_numpy()
    assert len(set(ids[:6].tolist())) == 6 and ids[:6].max() < 10  # the rest of epoch 0: old rows, each once


def test_a_log_only_source_is_stored_and_read_but_never_drawn_or_weighted(tmp_path: Path) -> None:
    log_schema = pa.schema([pa.field("session", pa.string(), nullable=False), pa.field("frame", pa.binary())])
    sources = [DataSource("base", rows(0, 64)), DataSource("log", schema=log_schema, log_only=True)]
    buf = DataBuffer(sources, seed=0, directory=tmp_path)
    assert buf.batch_columns == ["id", "blob"]  # its columns need not match the training sources'
    buf.ingest(pa.table({"session": ["a", "b"], "frame": [b"1", b"2"]}, schema=log_schema), "log", batch_id="l1")
    assert buf.read("log").column("session").to_pylist() == ["a", "b"]
    info = buf.sources()["log"]
    assert info["log_only"] and info["weight"] == 0 and info["rows"] == 2
    assert "log" not in buf.mixture()
    with pytest.raises(ValueError, match="unknown data source"):
        buf.set_mixture({"log": 1.0})
    chunk = buf.next_batches(16, 4)
    assert chunk is not None and chunk.table.column_names == ["id", "blob"]
    assert set(chunk.table.column("id").to_pylist()) <= set(range(64))
    buf.close()
    again = DataBuffer(sources, seed=0, directory=tmp_path)  # recovered like any live source
    assert again.read("log").num_rows == 2
    again.close()
    with pytest.raises(ValueError, match="log_only source is live"):
        DataSource("bad", rows(0, 4), log_only=True)


@pytest.mark.parametrize("policy", ["uniform", "recency", "fresh", "epoch"])
def test_draws_do_not_depend_on_where_rows_live(tmp_path: Path, policy: str) -> None:
    """Rows split between segments and memory, and the same rows rebuilt from the segments
    alone (a restart, a resume), give the very same batches in the same order."""
    buf = live_buffer(tmp_path, seed=3, policy=policy, base=True, segment_mb=0.002, memory_rows=25)
    for i in range(12):
        buf.ingest(rows(i * 10, 10, blob=64), "live")
    live = buf._sources["live"]
    assert 0 < live.cold_rows < live.rows and live.hot.rows  # really split
    pos = buf.position()
    first = buf.next_batches(16, 6)
    buf.close()

    rebuilt = live_buffer(tmp_path, seed=3, policy=policy, base=True, segment_mb=0.002, memory_rows=25)
    assert rebuilt._sources["live"].hot_rows == 0 and rebuilt._sources["live"].rows == 120  # all from segments now
    again = rebuilt.next_batches(16, 6, position=pos)
    assert first is not None and again is not None
    assert first.table.column("id").to_pylist() == again.table.column("id").to_pylist()
    assert first.table.equals(again.table)


def test_a_draw_over_many_ingests_touches_few_blocks_and_gives_every_row_where_it_lies(tmp_path: Path) -> None:
    """Rows in memory are one record batch (columns of our own), or, where nulls are allowed,
    tables merged pairwise (O(log n) blocks), so a draw over a large source costs one or a few
    ``take`` calls, not one per ingest; and rows come back exactly, in draw order, from
    memory, from the segments, or from both."""
    big = live_buffer(tmp_path / "hot", fsync=False)
    for i in range(300):  # 4 MB in memory
        big.ingest(rows(i * 7, 7, blob=2048), "live")
    hot = big._sources["live"].hot
    assert isinstance(hot, ColumnRows) and hot._batch().num_rows == 2100 == hot.rows
    nullable = DataBuffer([DataSource("live", schema=SCHEMA, allow_nulls=True)], directory=tmp_path / "nulls",
                          config=BufferConfig(fsync=False))
    for i in range(300):
        nullable.ingest(rows(i * 7, 7, blob=2048), "live")
    blocks = nullable._sources["live"].hot
    assert isinstance(blocks, BlockRows) and len(blocks._blocks) <= int(np.log2(300)) + 1, len(blocks._blocks)
    idx = np.random.default_rng(1).integers(0, 2100, 64)
    for buffer in (big, nullable):
        assert buffer._sources["live"].take(idx, buffer.batch_schema).column("id").to_pylist() == idx.tolist()

    buf = live_buffer(tmp_path / "split", segment_mb=0.05, memory_rows=600)
    for i in range(300):
        buf.ingest(rows(i * 7, 7), "live")
    live = buf._sources["live"]
    assert 0 < live.cold_rows < live.rows
    assert len(live._cold_table(buf.batch_schema).to_batches()) > 20  # the cold side really is many record batches
    rng = np.random.default_rng(0)
    for idx in (rng.integers(0, live.rows, 64), np.arange(live.rows)[::-1], np.array([live.rows - 1, 0, 5, 5]),
                rng.integers(0, live.cold_rows, 32), rng.integers(live.cold_rows, live.rows, 32)):
        got = live.take(idx, buf.batch_schema)
        assert got.column("id").to_pylist() == idx.tolist()
    assert live.take(np.array([], np.int64), buf.batch_schema).num_rows == 0
