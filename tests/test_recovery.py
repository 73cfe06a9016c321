"""Runs that heal themselves, on a real local Ray with real SIGKILLs: a lost trainer is
restarted from its newest checkpoint and continues with exactly the losses of an
uninterrupted run (live rows and a restarted buffer included); a lost controller is
restarted and rebuilt from the run directory while clients keep working; a run that
cannot be restarted shows ``failed`` and can be stopped and resumed; a dead driver leaves
nothing behind; a stopped trainer process shows as ``stalled``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from ray_interactive.core.config import RunConfig
from ray_interactive.runtime.launch import RunFailed

from .conftest import PACE_S, REPO, py_stacks, regression_config, wait_until
from .test_branch_resume import losses
from .test_cli import cli
from .test_live_data import live_config, live_rows


def run_names(namespace: str = "ray_interactive") -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace}


def log_lines(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "commands.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]  # every line whole: none half-written


def events(client: Any, kind: str) -> list[dict[str, Any]]:
    return [r for r in client.commands() if r["kind"] == kind and r["source"] == "system"]


def actor_pids(handle: Any) -> list[int]:
    """The pids of a run's trainer, buffer and controller (those that answer)."""
    pids = []
    for actor in (handle.trainer, handle.buffer, handle.controller):
        with contextlib.suppress(Exception):
            pids.append(ray.get(actor.pid.remote(), timeout=10))
    return pids


def scripted_start(handle: Any) -> Any:
    """Live rows, an lr change pinned at 45 and a pause at 50, then go."""
    client = handle.client()
    for i in range(4):
        client.ingest(live_rows(i * 50, 50), "live", batch_id=f"rows{i}")
    client.send("update_optimizer", params={"lr": 5e-4}, at_step=45)
    client.send("pause", at_step=50)
    client.send("resume")
    wait_until(lambda: (s := client.status())["status"] == "paused" and s["step"] == 50, timeout=60, what="pause at 50")
    return client


def test_a_killed_trainer_is_restarted_from_its_checkpoint_and_continues_with_the_uninterrupted_losses(
    tmp_path: Path, start: Any
) -> None:
    def config(name: str) -> RunConfig:
        return live_config(tmp_path / name, name=f"{name}-{os.getpid()}", start_paused=True, checkpoint_every=20,
                           max_steps=80, metrics_flush_s=60.0)

    whole = start(config("whole"))
    c = scripted_start(whole)
    c.send("resume")
    whole.wait(timeout=120)
    expected = losses(c, "main", 41, 80)
    assert len(expected) == 40

    healed = start(config("healed"))
    client = scripted_start(healed)
    trainer_pid = ray.get(healed.trainer.pid.remote())
    buffer_pid = ray.get(healed.buffer.pid.remote())
    os.kill(buffer_pid, signal.SIGKILL)  # the rows come back from the segments, in another process
    os.kill(trainer_pid, signal.SIGKILL)
    resume = client.send("resume")  # sent meanwhile: waits until the trainer is back where it died
    assert resume.status.value == "accepted"
    wait_until(lambda: events(client, "recovered"), timeout=150, what="the recovery to finish",
               state=lambda: (client.status(), client.commands(limit=8), py_stacks(*actor_pids(healed))))
    assert client.wait(resume, timeout=60).status.value == "applied"
    final = healed.wait(timeout=120)
    assert final is not None and final["step"] == 80

    assert ray.get(healed.trainer.pid.remote()) != trainer_pid  # really a new process
    lost = events(client, "trainer_lost")  # (twice if a restarted instance stayed silent and was restarted again)
    assert lost and all("checkpoint main@40" in e["message"] for e in lost), lost
    assert losses(client, "main", 41, 80) == expected  # bit-identical, live rows included
    # The log: the pinned lr change and pause were applied once each (re-applying them
    # after the restart wrote nothing); the resume sent meanwhile was applied once, at 50.
    lines = log_lines(healed.config.resolved_run_dir)
    applied = [r for r in lines if r["status"] == "applied" and r["command"] and r["seq"]]
    assert len(applied) == len({r["command"]["id"] for r in applied})
    kinds = {r["command"]["kind"]: r["applied_step"] for r in applied if r["command"]["id"] == resume.id}
    assert kinds == {"resume": 50}


def test_a_killed_controller_is_restarted_rebuilt_from_disk_and_clients_keep_working(
    tmp_path: Path, start: Any, ray_cluster: dict[str, Any]
) -> None:
    handle = start(regression_config(tmp_path, checkpoint_every=50))
    client = handle.client()
    wait_until(lambda: client.status()["step"] >= 20, what="steps")
    first = client.wait(client.send("update_optimizer", params={"lr": 7e-4}))
    pid = ray.get(handle.controller.pid.remote())

    sent: list[Any] = []
    errors: list[BaseException] = []

    def keep_sending() -> None:  # a client busy through the restart: every call must work
        try:
            for i in range(20):
                sent.append(client.send("set_grad_clip", max_norm=1.0 + i))
                client.status()
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    thread = threading.Thread(target=keep_sending, daemon=True)
    thread.start()
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=120)
    assert not errors, errors
    assert ray.get(handle.controller.pid.remote()) != pid

    # Rebuilt from the run directory: history, numbering, and the trainer is its again.
    assert client.command(first.id).status.value == "applied"
    recs = [client.wait(r, timeout=60) for r in sent]
    assert all(r.status.value == "applied" for r in recs), [(r.seq, r.status, r.message) for r in recs]
    assert len({r.seq for r in recs}) == 20
    step = client.status()["step"]
    wait_until(lambda: client.status()["step"] > step + 10 and client.status()["status"] == "running",
               timeout=60, what="training seen by the new controller")
    out = cli("--address", ray_cluster["address"], "status", handle.config.name)
    assert out.returncode == 0 and "running" in out.stdout, out.stderr
    # commands.jsonl: nothing lost, nothing twice (one accepted line per command id).
    lines = log_lines(handle.config.resolved_run_dir)
    accepted = [r["command"]["id"] for r in lines if r["status"] == "accepted" and r["command"]]
    assert len(accepted) == len(set(accepted)) == 21
    client.stop()
    assert handle.wait(timeout=60)["status"] == "stopped"


def test_a_detached_run_whose_trainer_cannot_restart_shows_failed_and_can_be_stopped_and_resumed(
    tmp_path: Path, start: Any, ray_cluster: dict[str, Any]
) -> None:
    config = regression_config(tmp_path, checkpoint_every=10, max_restarts=0)
    handle = start(config, detached=True)
    client = handle.client()
    wait_until(lambda: client.status()["step"] >= 15, what="steps")
    os.kill(ray.get(handle.trainer.pid.remote()), signal.SIGKILL)
    status = wait_until(lambda: (s := client.status())["status"] == "failed" and s, timeout=60, what="failed")
    assert "trainer was lost" in status["message"] and "max_restarts=0" in status["message"]
    with pytest.raises(RunFailed, match="trainer was lost"):
        handle.wait(timeout=10)

    # `stop` works on it: the run's actors are released, nothing is killed by hand.
    out = cli("--address", ray_cluster["address"], "send", config.name, "stop")
    assert out.returncode == 0 and "applied" in out.stdout, out.stdout + out.stderr
    wait_until(lambda: not any(n.startswith(f"{config.name}.") for n in run_names()), timeout=60, what="actors gone")

    # --resume works, and again straight after a second loss (no stop in between).
    again = start(config, resume=True, detached=True)
    c2 = again.client()
    wait_until(lambda: c2.status()["step"] >= 25, what="the resumed run to train")
    os.kill(ray.get(again.trainer.pid.remote()), signal.SIGKILL)
    wait_until(lambda: c2.status()["status"] == "failed", timeout=60, what="failed again")
    third = start(config, resume=True)
    c3 = third.client()
    wait_until(lambda: c3.status()["status"] == "running", what="the third start to run")


def test_when_the_driver_dies_nothing_of_the_run_is_left_and_it_can_be_resumed(
    tmp_path: Path, start: Any, ray_cluster: dict[str, Any]
) -> None:
    name = f"driver-{os.getpid()}"
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray_interactive.cli", "--address", ray_cluster["address"], "run",
         "--task", "ray_interactive.examples.regression:RegressionTask", "--name", name, "--run-dir", str(run_dir),
         "--set", "checkpoint_every=10", "--set", "torch_threads=1", "--quiet", "--task-arg", f"pace_s={PACE_S}"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        from ray_interactive.runtime.client import connect

        client = wait_until(lambda: _try_connect(connect, name), timeout=90, what="the run to start")
        wait_until(lambda: client.status()["step"] >= 20, timeout=60, what="steps")
    finally:
        proc.kill()
        proc.wait(timeout=30)
    wait_until(lambda: not any(n.startswith(f"{name}.") for n in run_names()), timeout=60, what="actors gone")
    resumed = start(RunConfig.load(run_dir / "config.json"), resume=True)
    c = resumed.client()
    step = c.status()["step"]
    assert step >= 10
    wait_until(lambda: c.status()["step"] > step + 5, what="the resumed run to train")


def _try_connect(connect: Any, name: str) -> Any:
    try:
        client = connect(name)
        return client if client.status()["step"] > 0 else None
    except Exception:  # noqa: BLE001 - not there yet
        return None


def test_a_stopped_trainer_process_shows_as_stalled_not_running(tmp_path: Path, start: Any) -> None:
    """By default the bound is the run's own pace (here: its floor, 10 s), not two minutes."""
    handle = start(regression_config(tmp_path))
    client = handle.client()
    wait_until(lambda: client.status()["step"] >= 30, what="steps")
    pid = ray.get(handle.trainer.pid.remote())
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        status = wait_until(lambda: (s := client.status())["status"] == "stalled" and s, timeout=60, what="stalled",
                            state=client.status)
        assert time.monotonic() - stopped < 60  # the fixed bound was 120 s
        assert "no step has completed for" in status["message"] and "steps took" in status["message"], status
        assert status["samples_per_s"] == 0.0
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: client.status()["status"] == "running", timeout=30, what="running again")
