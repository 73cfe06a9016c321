"""The live data path on a real Ray cluster: a buffer actor killed mid-ingest recovers
every acknowledged row exactly once while training goes on; fresh rows reach gradients
quickly; freshness figures and rejections reach the controller; mixtures change live."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import ray

from ray_interactive.examples.regression import live_schema, make_table

from .conftest import regression_config, wait_until
from .test_cli import cli

IN_DIM = 32


def live_rows(start: int, n: int) -> pa.Table:
    """Rows for the ``live`` source whose ``y`` encodes a unique id (to trace them)."""
    t = make_table(n, IN_DIM, seed=start)
    ids = np.arange(start, start + n, dtype=np.float32)
    return pa.table({"x": t.column("x"), "y": ids}, schema=live_schema(IN_DIM))


class Traffic:
    """Two clients ingesting ``live`` until :meth:`stop`, from threads: one call per table
    of 5 rows (ids from 0, batch ids ``b<i>``), and the coalescing ingest log adding tables
    of 1-3 rows (ids from 1,000,000 on)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.acked: list[dict[str, Any]] = []
        self.logged: list[tuple[int, int, Any]] = []  # (first id, rows, future) of the ingest log's adds
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self.log = client.ingest_log(max_delay_s=0.005)
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._calls, self._adds)]
        for t in self.threads:
            t.start()

    def _calls(self) -> None:
        i = 0
        try:
            while not self._stop.is_set():
                self.acked.append(self.client.ingest(live_rows(i * 5, 5), "live", batch_id=f"b{i}"))
                i += 1
        except BaseException as e:  # noqa: BLE001 - the test reports it
            self.errors.append(e)

    def _adds(self) -> None:
        i = 1_000_000
        try:
            while not self._stop.is_set():
                n = 1 + i % 3
                self.logged.append((i, n, self.log.add(live_rows(i, n), "live")))
                i += n
                time.sleep(0.002)
        except BaseException as e:  # noqa: BLE001 - the test reports it
            self.errors.append(e)

    def stop(self) -> int:
        """Stop both; returns the rows the ingest log could not send."""
        self._stop.set()
        for t in self.threads:
            t.join(timeout=60)
        return self.log.close(timeout=60)

    def sent(self) -> list[tuple[int, int, dict[str, Any]]]:
        """``(first id, rows, acknowledgement)`` of everything acknowledged."""
        return ([(5 * int(a["batch_id"][1:]), 5, a) for a in self.acked]
                + [(i, n, f.result()) for i, n, f in self.logged])


def live_config(tmp_path: Path, **overrides: Any) -> Any:
    return regression_config(tmp_path, task_kwargs={"live_source": True, "live_weight": 0.5}, **overrides)


def test_sigkill_of_the_buffer_mid_ingest_loses_no_acknowledged_row_and_training_goes_on(
    tmp_path: Path, start: Any
) -> None:
    """Two clients ingest while the buffer is killed: one call per table, and the coalescing
    ingest log adding tables of 1-3 rows (ids from 1,000,000 on)."""
    handle = start(live_config(tmp_path))
    client = handle.client()
    wait_until(lambda: client.status()["step"] >= 5, what="training to start")
    traffic = Traffic(client)
    acked, logged = traffic.acked, traffic.logged
    wait_until(lambda: len(acked) >= 20, what="some acknowledged ingests")
    pid = ray.get(handle.buffer.pid.remote())
    os.kill(pid, signal.SIGKILL)
    killed_at, logged_at = len(acked), len(logged)
    wait_until(lambda: len(acked) >= killed_at + 20, timeout=90, what="ingests to go on after the restart")
    wait_until(lambda: sum(f.done() for _, _, f in logged[logged_at:]) >= 20, timeout=90,
               what="the ingest log's adds to be acknowledged after the restart")
    step_after = client.status()["step"]
    wait_until(lambda: client.status()["step"] >= step_after + 20, timeout=60, what="training to go on")
    assert traffic.stop() == 0
    assert not traffic.errors, traffic.errors

    assert ray.get(handle.buffer.pid.remote()) != pid  # a new process: it really restarted
    assert ray.get(handle.buffer.stats.remote())["restarted"]
    stored = client.read_rows("live", columns=["y"]).column("y").to_numpy().astype(np.int64)
    # Every acknowledged row exactly once, at the sequence numbers its acknowledgement gave.
    assert len(np.unique(stored)) == len(stored)
    sent = traffic.sent()
    for first_id, n, ack in sent:
        assert ack["rows"] == n
        np.testing.assert_array_equal(stored[ack["first"]: ack["last"] + 1], np.arange(first_id, first_id + n))
    assert len(stored) == sum(n for _, n, _ in sent)
    coalesced = {f.result()["batch_id"] for _, _, f in logged}
    assert len(coalesced) < len(logged) / 2  # the small tables really went together
    assert client.status()["status"] == "running"


def test_fresh_rows_reach_a_gradient_quickly_and_freshness_is_reported(
    tmp_path: Path, start: Any, ray_cluster: dict[str, Any]
) -> None:
    handle = start(live_config(tmp_path, buffer={"stats_interval_s": 0.2}))
    client = handle.client()
    wait_until(lambda: client.status()["step"] >= 3, what="training to start")
    for i in range(20):
        client.ingest(live_rows(i * 4, 4), "live")
        time.sleep(0.05)

    def reported() -> Any:
        m = client.metrics(keys=["data/first_use_p50_s", "data/freshest_age_s", "data/live/rows", "mix/live", "data/live/ingest_rows_per_s"])
        return m if len(m) == 5 and m["data/live/rows"]["value"][-1] == 80 else None

    m = wait_until(reported, timeout=30, what="freshness metrics")
    assert 0 < np.median(m["data/first_use_p50_s"]["value"]) < 2.0
    assert max(m["mix/live"]["value"]) > 0
    stats = client.data_status()["sources"]["live"]
    assert stats["rows"] == 80 and stats["bytes"] > 0
    # The rate covers the last 10 s, so it may be back to 0 by now; the series kept its peak.
    assert max(m["data/live/ingest_rows_per_s"]["value"]) > 0

    # Rejections are counted and explained, and the run trains on.
    with pytest.raises(ValueError, match="column 'y'"):
        client.ingest(pa.table({"x": live_rows(0, 1).column("x"), "y": pa.array(["a"])}), "live")
    status = wait_until(lambda: (s := client.data_status()) and s["rejected"] == 1 and s, timeout=30, what="rejection stats")
    assert "column 'y'" in status["rejections"][-1]["message"]
    step = client.status()["step"]
    wait_until(lambda: client.status()["step"] > step + 5, what="training to go on")

    # The same figures from another process, as a person would ask for them.
    out = cli("--address", ray_cluster["address"], "data", handle.config.name)
    assert out.returncode == 0, out.stderr
    assert "live" in out.stdout and "80 rows" in out.stdout and "rejected" in out.stdout and "column 'y'" in out.stdout


def test_mixture_change_applies_from_the_next_batch_and_checkpoints_keep_the_fresh_cursor(
    tmp_path: Path, start: Any
) -> None:
    handle = start(live_config(tmp_path, metrics_interval_s=0.05))
    client = handle.client()
    client.ingest(live_rows(0, 200), "live")
    rec = client.wait(client.send("set_data_mixture", weights={"base": 0.0, "live": 1.0}))
    assert rec.status.value == "applied"
    wait_until(lambda: client.status()["step"] >= rec.applied_step + 5, what="steps after the change")
    mix = client.metrics(keys=["mix/live"], since=rec.applied_step + 1)["mix/live"]
    assert mix["value"] and all(v == 1.0 for v in mix["value"])  # every batch after it
    save = client.wait(client.send("save_checkpoint"))
    state = (Path(handle.config.resolved_run_dir) / "checkpoints" / save.message.removeprefix("saved ") / "state.json").read_text()
    assert '"fresh"' in state and '"live"' in state


def test_a_resumed_run_has_every_live_row_it_had(tmp_path: Path, start: Any) -> None:
    config = live_config(tmp_path)
    handle = start(config)
    client = handle.client()
    acks = [client.ingest(live_rows(i * 10, 10), "live") for i in range(5)]
    assert acks[-1]["last"] == 49
    client.stop()
    handle.wait(timeout=60)
    handle.shutdown()

    again = start(config, resume=True)
    c2 = again.client()
    assert c2.sources()["live"]["rows"] == 50
    ys = c2.read_rows("live", columns=["y"]).column("y").to_numpy()
    np.testing.assert_array_equal(ys, np.arange(50, dtype=np.float32))
    # ids survive too, with their rows: the same rows are a retry, other rows are refused
    assert c2.ingest(live_rows(0, 10), "live", batch_id=acks[0]["batch_id"])["duplicate"]
    with pytest.raises(ValueError, match="was already used for different rows"):
        c2.ingest(live_rows(50, 1), "live", batch_id=acks[0]["batch_id"])
    assert c2.ingest(live_rows(50, 1), "live")["first"] == 50
