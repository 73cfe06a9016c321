"""Many workers: a run under Ray Train's TorchTrainer (DDP, gloo) on a real local Ray,
steered exactly like one trainer. Every rank applies every command at the same step (the
checkpoints record each rank's step, lrs, clipping and a weight checksum, and they must
agree); each rank draws its own data; a run saved with 2 workers resumes with 2 and goes
on with the uninterrupted losses; a lost worker is recovered like a lost trainer."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import ray

from ray_interactive.core.config import RunConfig
from ray_interactive.runtime.launch import check_workers, replay_run

from .conftest import regression_config, wait_until
from .test_branch_resume import losses
from .test_recovery import events


def workers_config(tmp_path: Path, name: str, **overrides: Any) -> RunConfig:
    doc = {"workers": 2, "start_paused": True, "checkpoint_every": 20, "metrics_flush_s": 60.0, **overrides}
    return regression_config(tmp_path / name, name=f"{name}-{os.getpid()}", **doc)


def steer(client: Any, save: bool) -> list[Any]:
    recs = [
        client.send("update_optimizer", params={"lr": 5e-4}, at_step=15),
        client.send("set_grad_clip", max_norm=0.5, at_step=25),
    ]
    if save:
        recs.append(client.send("save_checkpoint", tag="mid", at_step=27))
    client.send("resume")
    return recs


def test_two_workers_apply_every_command_at_the_same_step_and_resume_with_the_uninterrupted_losses(
    tmp_path: Path, start: Any
) -> None:
    whole = start(workers_config(tmp_path, "whole", max_steps=60))
    client = whole.client()
    recs = steer(client, save=True)
    final = whole.wait(timeout=180)
    assert final is not None and final["step"] == 60 and final["frontend"] == "ddp"
    done = [client.wait(r) for r in recs]
    assert [(r.status.value, r.applied_step) for r in done] == [("applied", 15), ("applied", 25), ("applied", 27)]

    # Every rank had applied them at those steps: the ranks' states in the tagged checkpoint agree.
    ckpt = tmp_path / "whole" / "run" / "checkpoints" / done[2].message.removeprefix("saved ")
    state = json.loads((ckpt / "state.json").read_text())["state"]
    ranks = state["data_position"]["rank_states"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]
    assert ranks[0]["step"] == 27 and ranks[0]["lrs"] == [5e-4, 5e-4] and ranks[0]["grad_clip"] == 0.5
    positions = state["data_position"]["ranks"]
    assert positions[0]["shard"] == [0, 2] and positions[1]["shard"] == [1, 2]
    assert positions[0]["rng"] != positions[1]["rng"]  # each rank its own stream
    assert not events(client, "ranks_disagree")
    m = client.metrics(keys=["loss", "loss/rank0", "lr", "ddp/sync_ms"])
    assert m["lr"]["value"][15] == 5e-4 and m["lr"]["value"][14] == 1e-3  # step 16 used it
    assert len(m["loss/rank0"]["value"]) == 60 and len(m["ddp/sync_ms"]["value"]) == 60
    expected = losses(client, "main", 31, 60)
    uninterrupted = losses(client, "main", 1, 60)

    # Resumed from its checkpoint at step 40 (written by 2 workers: one data position each),
    # the run recomputes steps 41-60 bit-identically.
    whole.shutdown()
    config = RunConfig.load(tmp_path / "whole" / "run" / "config.json")
    with pytest.raises(ValueError, match="written by 2 worker"):
        check_workers(Path(config.resolved_run_dir) / "checkpoints" / "main@40", 1)
    resumed = start(config.model_copy(update={"start_paused": False}), resume=True, resume_from="main@40")
    resumed.wait(timeout=180)
    assert losses(resumed.client(), "main", 41, 60) == {s: v for s, v in expected.items() if s > 40}  # bit-identical, 2 workers
    resumed.shutdown()

    # The command log replayed into a new 2-worker run reproduces the run too.
    again = replay_run(tmp_path / "whole" / "run", f"again-{os.getpid()}", tmp_path / "again")
    try:
        again.wait(timeout=180)
        assert losses(again.client(), "main", 1, 60) == uninterrupted
    finally:
        again.shutdown()


def rank_pids() -> dict[int, int]:
    """pid of each live Ray Train worker actor."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return {i: a["pid"] for i, a in enumerate(sorted(actors, key=lambda a: a["pid"]))}


def test_a_lost_worker_is_recovered_from_the_newest_checkpoint(tmp_path: Path, start: Any) -> None:
    handle = start(workers_config(tmp_path, "lost", start_paused=False))
    client = handle.client()
    wait_until(lambda: client.status()["step"] >= 50, timeout=120, what="steps")
    pids = wait_until(lambda: len(p := rank_pids()) == 2 and p, what="two workers")
    os.kill(pids[1], signal.SIGKILL)
    lost = wait_until(lambda: events(client, "trainer_lost"), timeout=120, what="the loss to be noticed")
    assert "restarting from checkpoint main@" in lost[0]["message"]
    wait_until(lambda: events(client, "recovered"), timeout=180, what="the worker group to recover")
    step = client.status()["step"]
    wait_until(lambda: client.status()["step"] > step + 20, timeout=60, what="training to go on")
    rec = client.wait(client.send("update_optimizer", params={"lr": 4e-4}), timeout=60)
    assert rec.status.value == "applied"
    assert set(rank_pids().values()).isdisjoint({pids[1]})

    # A branch from a checkpoint: every rank loads it (its own data position) and goes on.
    fork = client.checkpoints()[0]
    load = client.wait(client.send("load_checkpoint", checkpoint_id=fork["id"], branch="b"), timeout=60)
    assert load.status.value == "applied", load.message
    wait_until(lambda: (s := client.status())["branch"] == "b" and s["step"] > fork["step"] + 10, what="branch b")
    save = client.wait(client.send("save_checkpoint", tag="on-b"), timeout=60)
    ckpt = Path(handle.config.resolved_run_dir) / "checkpoints" / save.message.removeprefix("saved ")
    ranks = json.loads((ckpt / "state.json").read_text())["state"]["data_position"]["rank_states"]
    assert ranks[0] == ranks[1] and ranks[0]["branch"] == "b" and ranks[0]["lrs"] == [1e-3, 1e-3]  # as at the fork
    client.stop()
    assert handle.wait(timeout=120)["status"] == "stopped"
    assert ray.get(handle.controller.status.remote())["frontend"] == "ddp"
