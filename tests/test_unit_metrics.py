"""Metric series, min/max thinning, lineage queries and Parquet persistence (no Ray)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from ray_interactive.core.metrics import MetricStore, PartWriter, Series, thin_minmax

N_POINTS = 100_000
UP_SPIKES = [5_000 + 10_000 * k for k in range(10)]
DOWN_SPIKES = [9_000 + 10_000 * k for k in range(10)]


@pytest.fixture(scope="module")
def spiky() -> np.ndarray:
    rng = np.random.default_rng(0)
    y = rng.normal(0.0, 0.1, N_POINTS)
    for i, k in enumerate(UP_SPIKES):
        y[k] = 10.0 + i  # distinct heights: the global max is the last
    for i, k in enumerate(DOWN_SPIKES):
        y[k] = -10.0 - i
    return y


@pytest.mark.parametrize("max_points", [3, 100, 500, 1001])
def test_thin_minmax_returns_at_most_n_sorted_unique_indices_ending_at_the_last(spiky: np.ndarray, max_points: int) -> None:
    idx = thin_minmax(spiky, max_points)
    assert 0 < len(idx) <= max_points
    assert np.all(np.diff(idx) > 0)  # sorted and unique
    assert idx[0] >= 0 and idx[-1] == N_POINTS - 1
    assert np.issubdtype(idx.dtype, np.integer)


@pytest.mark.parametrize("max_points", [3, 100, 500, 1001])
def test_thin_minmax_keeps_the_global_min_and_max(spiky: np.ndarray, max_points: int) -> None:
    idx = set(thin_minmax(spiky, max_points).tolist())
    assert int(np.argmax(spiky)) in idx
    assert int(np.argmin(spiky)) in idx


@pytest.mark.parametrize("max_points", [100, 500, 1001])
def test_thin_minmax_keeps_every_spike(spiky: np.ndarray, max_points: int) -> None:
    idx = set(thin_minmax(spiky, max_points).tolist())
    assert set(UP_SPIKES) <= idx
    assert set(DOWN_SPIKES) <= idx


@pytest.mark.parametrize("max_points", [3, 100, 501, 1001])
def test_thin_minmax_keeps_each_equal_buckets_min_and_max_values(spiky: np.ndarray, max_points: int) -> None:
    idx = thin_minmax(spiky, max_points)
    size = math.ceil(N_POINTS / ((max_points - 1) // 2))
    for lo in range(0, N_POINTS, size):
        bucket = spiky[lo : lo + size]
        kept = spiky[idx[(idx >= lo) & (idx < lo + size)]]
        assert bucket.min() in kept
        assert bucket.max() in kept


def test_thin_minmax_returns_everything_when_it_fits() -> None:
    y = np.arange(50, dtype=float)
    assert thin_minmax(y, 50).tolist() == list(range(50))
    assert thin_minmax(y, 500).tolist() == list(range(50))
    assert thin_minmax(np.empty(0), 10).tolist() == []


def test_thin_minmax_refuses_fewer_than_three_points() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        thin_minmax(np.arange(10.0), 2)


def test_thin_minmax_with_nans_does_not_crash_and_keeps_real_extremes() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(size=10_000)
    y[::7] = np.nan
    y[1234] = 50.0
    y[4321] = -50.0
    idx = thin_minmax(y, 101)
    assert len(idx) <= 101 and idx[-1] == len(y) - 1
    assert np.all(np.diff(idx) > 0)
    assert {1234, 4321} <= set(idx.tolist())
    all_nan = thin_minmax(np.full(1000, np.nan), 11)
    assert len(all_nan) <= 11 and all_nan[-1] == 999


def test_series_append_puts_a_late_point_in_place_and_replaces_a_repeated_step() -> None:
    s = Series(capacity=4)  # also exercises growth
    for step in [1, 2, 3, 5, 6, 7, 8, 9, 10]:
        s.append(step, float(step), step * 1.0)
    s.append(4, 4.0, 4.0)  # a report that arrived late
    steps, _, values = s.window()
    assert steps.tolist() == list(range(1, 11))
    assert values.tolist() == [float(v) for v in range(1, 11)]
    s.append(6, 101.0, -7.0)  # the same step again replaces it
    assert s.window()[0].tolist() == list(range(1, 11))
    assert s.window()[2][5] == -7.0
    s.truncate(6)  # a rewind is explicit
    assert s.window()[0].tolist() == [1, 2, 3, 4, 5]


def test_metrics_sent_out_of_order_are_kept_in_memory_as_on_disk(tmp_path: Path) -> None:
    store = MetricStore()
    store.record("main", [(k, float(k), {"loss": float(k)}) for k in range(11, 21)])  # the later call first
    store.record("main", [(k, float(k), {"loss": float(k)}) for k in range(1, 11)])
    store.flush(tmp_path)
    on_disk = MetricStore.load(tmp_path).query([("main", None)])["loss"]["step"]
    assert on_disk == list(range(1, 21))
    assert store.query([("main", None)])["loss"]["step"] == on_disk


def test_series_window_is_inclusive_on_both_ends() -> None:
    s = Series()
    for step in range(0, 100, 10):
        s.append(step, 0.0, float(step))
    assert s.window(20, 50)[0].tolist() == [20, 30, 40, 50]
    assert s.window(21, 49)[0].tolist() == [30, 40]


def _rows(steps: range, offset: float = 0.0, key: str = "loss") -> list[tuple[int, float, dict[str, float]]]:
    return [(k, 1000.0 + k, {key: k + offset}) for k in steps]


def test_record_keeps_numbers_and_nan_and_drops_non_numeric_values() -> None:
    store = MetricStore()
    n = store.record("main", [(1, 0.0, {"loss": 1.5, "nan": math.nan, "flag": True, "text": "x", "n": 3})])
    assert n == 3
    assert store.keys("main") == ["loss", "n", "nan"]
    assert store.last("main", "loss") == (1, 1.5)
    assert math.isnan(store.last("main", "nan")[1])
    assert store.last("main", "missing") is None
    assert store.last("other", "loss") is None


def test_query_since_and_max_points() -> None:
    store = MetricStore()
    store.record("main", _rows(range(1000)))
    out = store.query([("main", None)], since=500)
    assert out["loss"]["step"] == list(range(500, 1000))
    assert out["loss"]["value"] == [float(k) for k in range(500, 1000)]
    assert out["loss"]["time"][0] == 1500.0
    thinned = store.query([("main", None)], keys=["loss"], max_points=51)["loss"]
    assert len(thinned["step"]) <= 51
    assert thinned["step"][-1] == 999
    assert thinned["step"] == sorted(thinned["step"])
    assert len(thinned["step"]) == len(thinned["value"]) == len(thinned["time"])
    assert store.query([("main", None)], keys=["nope"]) == {}


def test_query_along_a_lineage_splices_parent_then_child() -> None:
    store = MetricStore()
    store.record("main", _rows(range(1, 31)))  # main went on to 30 after the fork
    store.record("b", _rows(range(21, 41), offset=0.5))  # b forked from main at step 20
    out = store.query([("main", 20), ("b", None)])["loss"]
    assert out["step"] == list(range(1, 41))
    assert out["value"] == [float(k) for k in range(1, 21)] + [k + 0.5 for k in range(21, 41)]


def test_flush_and_load_reproduce_the_series(tmp_path: Path) -> None:
    store = MetricStore()
    store.record("main", [(k, 10.0 + k, {"loss": 1.0 / k, "acc": k / 100}) for k in range(1, 101)])
    assert store.flush(tmp_path) is not None
    store.record("b", _rows(range(5, 9)))
    store.record("main", _rows(range(101, 111)))
    second = store.flush(tmp_path)
    assert second is not None and second.name == "part-000001.parquet"
    assert store.flush(tmp_path) is None  # nothing new
    loaded = MetricStore.load(tmp_path)
    lineage = [("main", None)]
    assert loaded.query(lineage) == store.query(lineage)
    assert loaded.query([("b", None)]) == store.query([("b", None)])
    assert loaded.keys("main") == ["acc", "loss"]


def test_a_failed_flush_keeps_its_points_in_order_for_the_next(tmp_path: Path) -> None:
    store = MetricStore()
    store.record("main", _rows(range(1, 11)))
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(OSError):
        store.flush(blocked / "metrics")
    store.record("main", _rows(range(11, 21)))
    assert store.flush(tmp_path / "metrics") is not None
    assert MetricStore.load(tmp_path / "metrics").query([("main", None)]) == store.query([("main", None)])


def test_parts_written_in_the_background_survive_a_failing_disk(tmp_path: Path) -> None:
    """A part that cannot be written is retried (the later ones wait behind it): nothing is
    lost, a rewind between parts is read back right, and the error is reported, then cleared."""
    store, heard = MetricStore(), []
    writer = PartWriter(heard.append, retry_s=0.05)
    metrics = tmp_path / "metrics"
    store.record("main", _rows(range(1, 51)))
    first = store.take(metrics)
    store.rewind("main", 31, 5000.0)
    store.record("main", _rows(range(31, 41), offset=1000.0))
    second = store.take(metrics)
    assert first is not None and second is not None and second.path.name == "part-000001.parquet"
    metrics.rmdir()
    metrics.write_text("in the way")  # a disk that refuses the writes
    writer(first)
    writer(second)
    deadline = time.monotonic() + 60
    while not heard and time.monotonic() < deadline:
        time.sleep(0.01)
    assert heard and "metrics could not be written" in str(heard[0])
    metrics.unlink()
    metrics.mkdir()  # room again
    assert writer.drain(timeout=60)
    assert heard[-1] is None
    assert MetricStore.load(metrics).query([("main", None)]) == store.query([("main", None)])
    writer.close()


def test_load_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert MetricStore.load(tmp_path / "nothing").query([("main", None)]) == {}


def test_rewind_then_new_points_drops_the_stale_tail_on_disk(tmp_path: Path) -> None:
    store = MetricStore()
    store.record("main", _rows(range(1, 51)))
    store.record("other", _rows(range(1, 51)))  # another branch is not touched by the rewind
    store.flush(tmp_path)
    store.rewind("main", 31, 5000.0)
    store.record("main", _rows(range(31, 41), offset=1000.0))
    store.flush(tmp_path)

    expected_steps = list(range(1, 41))
    expected_values = [float(k) for k in range(1, 31)] + [k + 1000.0 for k in range(31, 41)]
    live = store.query([("main", None)])["loss"]
    assert live["step"] == expected_steps and live["value"] == expected_values

    loaded = MetricStore.load(tmp_path).query([("main", None)])["loss"]
    assert loaded["step"] == expected_steps
    assert loaded["value"] == expected_values
    assert MetricStore.load(tmp_path).query([("other", None)])["loss"]["step"] == list(range(1, 51))
    assert MetricStore.load(tmp_path).keys("main") == ["loss"]  # the rewind marker is no metric
