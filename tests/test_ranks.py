"""The plain-loop and Hugging Face front-ends on two ranks under ``torchrun`` (gloo on the
CPU), on the real local Ray: one run for the job, owned by rank 0; the same tour of
commands as on one process (tests/test_frontends.py); every rank applies every command at
the same optimizer step; and the run's command log, replayed on two ranks, gives the same
losses again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from ray_interactive.runtime.offline import FinishedRun

from .conftest import REPO, SHARED_DATA, wait_until
from .test_frontends import check_tour, client_of, losses, steer_through_the_tour
from .test_resume_frontends import step_of


def torchrun(kind: str, name: str, run_dir: Path, address: str, *extra: str,
             launcher: tuple[str, ...] = (), accelerate: bool = False) -> subprocess.Popen[bytes]:
    """The script on two ranks, started by torchrun (or ``accelerate launch``) as a user would.
    (``accelerate launch --cpu`` starts one process - many CPU processes need MPI there -
    while ``--multi_gpu`` starts them through torchrun's machinery; HF's Trainer then runs
    on the CPU with gloo.)"""
    env = {**os.environ, "RAY_ADDRESS": address, "OMP_NUM_THREADS": "1"}
    start = ([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m"] if accelerate else
             [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *launcher, "-m"])
    cmd = [*start, "tests.steered_script", kind, name, str(run_dir), "--max-steps", "100", "--pace", "0", *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-4000:]


def rank_records(where: Path, rank: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (where / f"rank{rank}.jsonl").read_text().splitlines()]


def ray_train(kind: str, name: str, run_dir: Path, seen: Path, max_steps: int = 100, failures: int = 0,
              env: dict[str, str] | None = None, **steer: Any) -> None:
    """The script as a Ray Train worker function on two workers (Ray's documented HF pattern)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .steered_script import ray_train_worker

    config = {"kind": kind, "name": name, "run_dir": str(run_dir), "max_steps": max_steps, "records": str(seen),
              "steer": steer, "env": env or {}}
    TorchTrainer(ray_train_worker, train_loop_config=config, scaling_config=ScalingConfig(num_workers=2),
                 run_config=RunConfig(name=name, storage_path=str(run_dir.parent / "ray-train"),
                                      failure_config=FailureConfig(max_failures=failures))).fit()


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "launcher"), [("loop", "torchrun"), ("hf", "torchrun"), ("loop", "ray-train"),
                                                ("hf", "ray-train"), ("hf", "accelerate")])
def test_a_loop_on_two_ranks_is_one_run_steered_alike_on_every_rank(
    kind: str, launcher: str, tmp_path: Path, ray_cluster: dict[str, Any]
) -> None:
    if kind == "hf" and not (SHARED_DATA / "wikitext-2").exists():
        pytest.skip("needs ../shared/data")
    address, name = ray_cluster["address"], f"ranks-{kind}-{launcher}"
    run_dir, seen = tmp_path / name, tmp_path / "seen"
    seen.mkdir()
    outcomes: dict[str, Any] = {}
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            client = wait_until(lambda: client_of(name), timeout=180, what="rank 0 to open the run")
            steer_through_the_tour(client, outcomes)
        except BaseException as e:  # surfaced below
            errors.append(e)

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    if launcher in ("torchrun", "accelerate"):
        finish(torchrun(kind, name, run_dir, address, "--start-paused", "--records", str(seen),
                        "--checkpoint-every", "0", accelerate=launcher == "accelerate"))
    else:
        ray_train(kind, name, run_dir, seen, start_paused=True, resume=False, checkpoint_every=None)
    thread.join(60)
    if errors:
        raise errors[0]

    r0, r1 = rank_records(seen, 0), rank_records(seen, 1)
    lr_used = {r["step"]: r["lr"] for r in r0}
    check_tour(outcomes, run_dir, lr_used)
    # every rank stepped alike: the same steps, branches and lrs, in the same order
    assert [(r["step"], r.get("branch"), r["lr"]) for r in r0] == [(r["step"], r.get("branch"), r["lr"]) for r in r1]
    status = FinishedRun(run_dir).status()
    assert status["frontend"] == kind
    if kind == "loop":
        logged = FinishedRun(run_dir).metrics(keys=["loss", "loss/rank0"], branch="main")
        loss, own = logged["loss"], logged["loss/rank0"]
        mean = {s: (a["loss"] + b["loss"]) / 2 for a, b in zip(r0, r1) if a.get("branch") == "main"
                for s in [a["step"]]}
        step = own["step"][5]
        assert loss["value"][5] == pytest.approx(mean[step], rel=1e-5)  # the loss is the mean over ranks
        assert own["value"][5] != loss["value"][5]

    if launcher != "torchrun":
        return
    replay_dir = tmp_path / f"{name}-replay"
    finish(torchrun(kind, f"{name}-replay", replay_dir, address, "--replay", str(run_dir), "--checkpoint-every", "0"))
    assert losses(replay_dir, "main") == pytest.approx(losses(run_dir, "main"), rel=1e-6)
    assert losses(replay_dir, "b") == pytest.approx(losses(run_dir, "b"), rel=1e-6)


def kill_rank_1_at(name: str, seen: Path, step: int) -> int:
    reached = wait_until(lambda: (s := step_of(name)) >= step and s, timeout=180, what=f"the run past step {step}")
    os.kill(int((seen / "pid1").read_text()), signal.SIGKILL)
    return int(reached)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["loop", "hf"])
def test_a_killed_rank_fails_the_run_with_the_reason_and_a_restarted_group_resumes_it(
    kind: str, tmp_path: Path, ray_cluster: dict[str, Any]
) -> None:
    """A rank SIGKILLed mid-run: the run ends "failed" with the reason (never "running" for
    ever). The group started again as ``torchrun --max-restarts`` starts it (the restart
    count in ``TORCHELASTIC_RESTART_COUNT``) continues from the newest checkpoint on its own,
    with the losses of an uninterrupted run. (torchrun's own restart is not used here: with
    gloo on torch 2.13 a restarted rank often fails to connect to the others before any of
    our code runs - reproduced with a 10-line script; README, "On many ranks".)"""
    if kind == "hf" and not (SHARED_DATA / "wikitext-2").exists():
        pytest.skip("needs ../shared/data")
    address, paced = ray_cluster["address"], ("--max-steps", "60", "--pace", "0.2")
    whole_dir, run_dir, seen = tmp_path / "whole", tmp_path / "killed", tmp_path / "seen"
    seen.mkdir()
    finish(torchrun(kind, f"ranks-whole-{kind}", whole_dir, address, *paced, "--pace", "0"))

    name = f"ranks-killed-{kind}"
    proc = torchrun(kind, name, run_dir, address, *paced, "--records", str(seen))
    killed_at = kill_rank_1_at(name, seen, 25)
    proc.communicate(timeout=180)
    assert proc.returncode != 0
    status = FinishedRun(run_dir).status()
    assert status["status"] == "failed", status
    assert "another rank of this job is gone" in status["message"] or "SIGTERM" in status["message"], status

    finish(torchrun(kind, name, run_dir, address, *paced, "--records", str(seen), "--restart-count", "1"))
    run = FinishedRun(run_dir)
    assert run.status()["status"] == "stopped" and run.status()["step"] == 60
    steps = [r["step"] for r in rank_records(seen, 0)]
    assert steps.count(killed_at - killed_at % 10 + 1) == 2  # computed again after the restart
    assert losses(run_dir, "main") == pytest.approx(losses(whole_dir, "main"), rel=1e-6)


@pytest.mark.slow
def test_a_worker_lost_under_ray_train_comes_back_with_resume_auto(tmp_path: Path, ray_cluster: dict[str, Any]) -> None:
    """Ray Train's ``FailureConfig`` restarts the worker group after a worker is SIGKILLed;
    the worker function, steered with ``resume="auto"``, continues the run from its newest
    checkpoint, to the losses of an uninterrupted run."""
    whole, seen_whole = tmp_path / "whole", tmp_path / "seen-whole"
    seen_whole.mkdir()
    ray_train("loop", "rt-whole", whole, seen_whole, max_steps=40, resume="auto", checkpoint_every=10)
    run_dir, seen = tmp_path / "lost", tmp_path / "seen"
    seen.mkdir()
    ray_train("loop", "rt-lost", run_dir, seen, max_steps=40, failures=1, resume="auto", checkpoint_every=10,
              env={"RI_TEST_DIE_AT": f"25:{tmp_path / 'died'}"})
    assert (tmp_path / "died").exists()  # rank 1 did die once
    run = FinishedRun(run_dir)
    assert run.status()["status"] == "stopped" and run.status()["step"] == 40
    steps = [r["step"] for r in rank_records(seen, 0)]
    assert steps.count(21) == 2  # computed again after the restart, from main@20
    assert losses(run_dir, "main") == pytest.approx(losses(whole, "main"), rel=1e-6)
