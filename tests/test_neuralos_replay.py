"""The replayer's promise under crashes: every logged interaction becomes exactly one true
transition in ``live``, in order, however often the process replaying them dies.

Two ways to die: right after the buffer acknowledged a batch but before the replayer recorded it
(the one window where a naive replayer stores a batch twice), and SIGKILL at arbitrary moments of
a replayer running in another process attached to the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from neuralos_example.data import decode_png, encode_png, task_session
from neuralos_example.replay import Replayer
from neuralos_example.simulator import Action, Desktop, Event, key_for_index
from neuralos_example.task import interaction_schema
from ray_interactive.core.config import RunConfig, TaskSpec
from ray_interactive.runtime.launch import start_run

from .conftest import REPO, wait_until

TASK = "neuralos_example.task:NeuralOSTask"


@pytest.fixture(scope="module")
def run(ray_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A NeuralOS run's buffer. Paused: the trainer takes no CPU from the replayers. The tests
    share it (starting one costs seconds): each logs its own sessions after the earlier ones'."""
    config = RunConfig(
        name=f"replay-{uuid.uuid4().hex[:6]}",
        task=TaskSpec(target=TASK, kwargs={"base_rows": 16}),
        run_dir=tmp_path_factory.mktemp("replay") / "run",
        batch_size=2,
        start_paused=True,
        torch_threads=1,
        trainer_num_cpus=1,
    )
    handle = start_run(config)
    yield {"name": config.name, "client": handle.client(), "address": ray_cluster["address"]}
    handle.shutdown()


def log(client: Any, logged: pa.Table) -> tuple[int, int]:
    """Log ``logged`` as the demo would; returns where it starts in ``interactions`` and where its transitions will start in ``live``."""
    src = client.sources()
    client.ingest(logged, "interactions")
    return src["interactions"]["rows"], src["live"]["rows"]


def interactions(n_sessions: int, seed: int) -> pa.Table:
    """What the demo logs for ``n_sessions`` users acting at once: their steps interleaved."""
    per_session = []
    for i in range(n_sessions):
        s = task_session(("create_folder", "open_browser")[i % 2], seed + i, warmup=i % 3)
        desk = Desktop(64, s.seed)
        rows = []
        for step, (a, tag) in enumerate(zip(s.actions, s.tags, strict=True)):
            rows.append({"session": f"s{seed + i}", "seed": s.seed, "step": step, "time": time.time(), "x": a.x, "y": a.y,
                         "event": int(a.event), "key_index": a.key_index, "task": tag, "frame": encode_png(desk.step(a)),
                         "model_version": 0, "latency_ms": 1.0, "sampler_steps": 1})
        per_session.append(rows)
    interleaved = [r for group in zip(*per_session) for r in group]
    shortest = min(len(p) for p in per_session)
    interleaved += [r for p in per_session for r in p[shortest:]]
    return pa.Table.from_pylist(interleaved, schema=interaction_schema())


def assert_exactly_once(client: Any, logged: pa.Table, live_from: int) -> None:
    """``live`` holds one transition per logged interaction, in log order, with the simulator's true frames."""
    live = client.read_rows("live", live_from).to_pylist()
    log_rows = logged.to_pylist()
    assert [(t["session"], t["step"]) for t in live] == [(r["session"], r["step"]) for r in log_rows]
    desks: dict[str, Desktop] = {}
    for r, t in zip(log_rows, live, strict=True):
        desk = desks.setdefault(r["session"], Desktop(64, r["seed"]))
        prev = desk.render()
        nxt = desk.step(Action(r["x"], r["y"], Event(r["event"]), key_for_index(r["key_index"])))
        assert np.array_equal(decode_png(t["prev"]), prev) and np.array_equal(decode_png(t["next"]), nxt)
        assert t["task"] == r["task"]


class DiesAfterTheAck:
    """The real client, except that the process "dies" (SystemExit) once the buffer has
    acknowledged an ingest and before the replayer can record it."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def ingest(self, *args: Any, **kwargs: Any) -> Any:
        ack = self._client.ingest(*args, **kwargs)
        raise SystemExit(f"killed after the buffer acknowledged rows {ack['first']}..{ack['last']}")


def test_a_batch_acknowledged_but_not_recorded_is_not_stored_twice(run: dict[str, Any], tmp_path: Path) -> None:
    client = run["client"]
    logged = interactions(3, seed=900_000)
    log_from, live_from = log(client, logged)
    state = tmp_path / "replayer.json"

    dying = Replayer(DiesAfterTheAck(client), state_path=state, max_rows=16, from_row=log_from)
    with pytest.raises(SystemExit, match="acknowledged"):
        dying.poll()
    assert client.sources()["live"]["rows"] == live_from + 16  # the buffer has the batch; the replayer never recorded it

    restarted = Replayer(client, state_path=state, max_rows=16)
    while restarted.poll():
        pass
    assert restarted.position == log_from + logged.num_rows
    assert restarted.transitions == logged.num_rows == client.sources()["live"]["rows"] - live_from
    assert_exactly_once(client, logged, live_from)


REPLAYER_PROCESS = """
import sys, time
from neuralos_example.replay import Replayer
from ray_interactive.runtime.client import connect

run, address, state, from_row = sys.argv[1:5]
replayer = Replayer(connect(run, address=address), state_path=state, max_rows=2, from_row=int(from_row))
while True:
    replayer.poll()
    time.sleep(0.02)  # a demo's poll interval, and time for the test to aim its kills
"""


def test_sigkilled_replayers_lose_and_duplicate_nothing(run: dict[str, Any], tmp_path: Path) -> None:
    client = run["client"]
    logged = interactions(12, seed=910_000)
    log_from, live_from = log(client, logged)
    state = tmp_path / "replayer.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    live_rows = lambda: client.sources()["live"]["rows"]  # noqa: E731
    rng = np.random.default_rng(0)
    done = live_from + logged.num_rows
    kills = 0
    while live_rows() < done and kills < 8:  # kill replayer after replayer until the log is replayed
        before = live_rows()
        proc = subprocess.Popen([sys.executable, "-c", REPLAYER_PROCESS, run["name"], run["address"], str(state), str(log_from)],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_until(lambda before=before: live_rows() >= min(before + 5, done), timeout=90, what="the replayer process to make progress")
            time.sleep(float(rng.uniform(0.0, 0.3)))  # somewhere inside a later batch
        finally:
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, out
        kills += 1
    assert kills >= 2, "the replay should have been cut short by kills"

    final = Replayer(client, state_path=state, max_rows=2)
    while final.poll():
        pass
    assert final.position == log_from + logged.num_rows
    assert live_rows() - live_from == logged.num_rows
    assert_exactly_once(client, logged, live_from)
