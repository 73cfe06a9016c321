"""Fuzzed Arrow tables and HTTP bodies against a live run: every table is stored whole or
refused with a reason, and afterwards the stored rows are exactly the acknowledged ones,
in order, and the run still trains (if extreme finite rows made a loss overflow, the
health guard paused it with a message first)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_interactive.runtime.launch import RunHandle, start_run
from ray_interactive.serve.ingest_client import to_ipc_stream

from .conftest import assert_plain, regression_config, wait_until

IN_DIM = 4
STREAM = {"Content-Type": "application/vnd.apache.arrow.stream"}


class Fed:
    """The run, and every ingest it acknowledged (their ``y`` values, in order)."""

    def __init__(self, handle: RunHandle) -> None:
        self.handle = handle
        self.client = handle.client()
        self.url = handle.ingest_url
        self.token = (handle.config.resolved_run_dir / "ingest_token").read_text()
        self.acked: list[tuple[dict[str, Any], np.ndarray]] = []
        self.counter = 0


@pytest.fixture(scope="module")
def fed(ray_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    config = regression_config(
        tmp_path_factory.mktemp("fuzz-data"),
        task_kwargs={"live_source": True, "in_dim": IN_DIM, "width": 8, "depth": 1, "live_weight": 0.5},
        http_ingest={},
    )
    handle = start_run(config)
    yield Fed(handle)
    handle.shutdown()


FLOATS = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e39, -1e300, 3.4e38, 0.0]),
)


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    """Tables near the live schema (x: 4 float32, y: float32, not null): right, or wrong in
    one or more ways (non-finite values, inexact casts, other kinds, nulls - also inside
    x's vectors -, columns)."""
    n = draw(st.integers(1, 6))
    ys = draw(st.lists(FLOATS, min_size=n, max_size=n))
    y_kind = draw(st.sampled_from(["float32", "float32", "float64", "int", "bool", "string", "nullable"]))
    if y_kind == "float32":
        with np.errstate(over="ignore"):
            y = pa.array(np.asarray(ys, np.float64).astype(np.float32))
    elif y_kind == "float64":
        y = pa.array(ys, pa.float64())
    elif y_kind == "int":
        y = pa.array(draw(st.lists(st.integers(-(2**40), 2**40), min_size=n, max_size=n)))
    elif y_kind == "bool":
        y = pa.array([bool(i % 2) for i in range(n)])
    elif y_kind == "string":
        y = pa.array([str(v) for v in ys])
    else:
        y = pa.array([None if i == 0 else 0.5 for i in range(n)], pa.float32())
    xs = draw(st.lists(FLOATS, min_size=n * IN_DIM, max_size=n * IN_DIM))
    null_at = -1  # at times a null item inside a vector
    if draw(st.sampled_from([False, False, False, False, False, True])):
        null_at = draw(st.integers(0, n * IN_DIM - 1))
    with np.errstate(over="ignore"):
        values = pa.array(np.asarray(xs, np.float64).astype(np.float32), mask=np.arange(n * IN_DIM) == null_at)
    x = pa.FixedSizeListArray.from_arrays(values, IN_DIM)
    names, cols = ["x", "y"], [x, y]
    shape = draw(st.sampled_from(["ok", "ok", "ok", "duplicate", "missing", "extra", "reordered"]))
    if shape == "duplicate":
        names, cols = ["x", "y", "y"], [x, y, y]
    elif shape == "missing":
        names, cols = ["x"], [x]
    elif shape == "extra":
        names, cols = ["x", "y", "z"], [x, y, y]
    elif shape == "reordered":
        names, cols = ["y", "x"], [y, x]
    return pa.table(cols, names=names)


def acceptable(table: pa.Table) -> bool:
    """What the schema check must accept: exactly the right columns, finite float32 values
    (or an exact cast to them), no nulls (at any level: x's items too)."""
    if sorted(table.column_names) != ["x", "y"]:
        return False
    y, x = table.column("y"), table.column("x")
    if not (pa.types.is_floating(y.type) or pa.types.is_integer(y.type)) or y.null_count:
        return False
    if x.null_count or x.combine_chunks().flatten().null_count:
        return False
    yv = np.asarray(y.to_pylist(), np.float64)
    xv = np.asarray(x.combine_chunks().values.to_pylist(), np.float64)
    if pa.types.is_integer(y.type) and np.any(np.abs(yv) > 2**24):
        return False  # not exact in float32
    with np.errstate(over="ignore"):
        return bool(np.isfinite(yv.astype(np.float32)).all() and np.isfinite(xv).all())


def stored_y(fed: Fed) -> np.ndarray:
    return fed.client.read_rows("live", columns=["y"]).column("y").to_numpy()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(table=tables(), how=st.sampled_from(["ray", "http", "http-cut"]))
def test_fuzzed_tables_are_stored_whole_or_refused_with_a_reason(fed: Fed, table: pa.Table, how: str) -> None:
    fed.counter += 1
    batch_id = f"fuzz-{fed.counter}"
    ok = acceptable(table)
    if how == "ray":
        try:
            ack = fed.client.ingest(table, "live", batch_id=batch_id)
        except ValueError as e:
            assert not ok, f"refused a good table: {e}"
            assert_plain(str(e), limit=1000)
            return
    else:
        body = to_ipc_stream(table)
        if how == "http-cut":
            body = body[:-8]  # the end-of-stream marker lost: cut off at a message boundary
        r = httpx.post(f"{fed.url}/v1/sources/live/ingest", content=body, params={"batch_id": batch_id},
                       headers={"Authorization": f"Bearer {fed.token}", **STREAM}, timeout=60)
        if r.status_code != 200:
            assert r.status_code == 400, r.text
            assert_plain(r.json()["error"], limit=1000)
            assert not ok or how == "http-cut", r.text
            return
        assert how == "http", "a cut-off stream was accepted"
        ack = r.json()
    assert ok, f"accepted a bad table: {table}"
    assert ack["rows"] == table.num_rows and not ack["duplicate"]
    fed.acked.append((ack, table.column("y").to_numpy(zero_copy_only=False).astype(np.float32)))


def test_after_fuzzing_the_stored_rows_are_exactly_the_acknowledged_ones_and_the_run_trains(fed: Fed) -> None:
    assert fed.acked, "the fuzzing acknowledged no table at all"
    stored = stored_y(fed)
    expected = np.concatenate([y for _, y in fed.acked])
    np.testing.assert_array_equal(stored, expected)
    assert [a["first"] for a, _ in fed.acked] == list(np.cumsum([0] + [len(y) for _, y in fed.acked[:-1]]))
    assert np.isfinite(stored).all()
    client = fed.client
    status = client.status()
    # Finite but extreme rows (3.4e38 is a legal float32) may overflow the squared loss: then
    # the health guard has paused the run, saying so, and no NaN reached the weights.
    assert status["status"] in ("running", "paused"), status
    if status["status"] == "paused":
        assert "health guard paused the run: non-finite" in status["message"]
    client.wait(client.send("set_data_mixture", weights={"base": 1.0, "live": 0.0}))
    client.wait(client.send("resume"))
    step = client.status()["step"]
    wait_until(lambda: client.status()["step"] > step + 10, timeout=60, what="training after fuzzing")
    assert client.status()["status"] == "running"
    assert all(math.isfinite(v) for v in client.metrics(keys=["loss"])["loss"]["value"])
