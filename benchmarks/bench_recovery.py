"""Recovery time: how long a run takes to heal after a SIGKILL of its trainer or of its
controller, on a real local Ray (this machine).

* Trainer killed (the regression task, a checkpoint every 50 steps, killed past step
  170): seconds from the kill until the restarted trainer completes a
  step again ("training again"), and until it is back at the step it died at with the
  commands held meanwhile released ("caught up": the recovery event).
* One of 2 DDP workers killed: seconds until the worker group is back where it died.
* Controller killed: seconds from the kill until a client's status call is answered again
  (issued right after the kill; Ray retries it on the restarted actor), and until a
  command submitted after the kill has been applied.

    python benchmarks/bench_recovery.py [--passes 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray  # noqa: E402
from _common import machine, save  # noqa: E402

from ray_interactive.core.config import RunConfig, TaskSpec  # noqa: E402
from ray_interactive.runtime.launch import start_run  # noqa: E402


def wait(pred, timeout: float = 120.0, every: float = 0.01):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise TimeoutError("condition not met")


def one_pass(root: Path, i: int) -> dict[str, float]:
    cfg = RunConfig(
        name=f"bench-recovery-{os.getpid()}-{i}", task=TaskSpec(target="ray_interactive.examples.regression:RegressionTask"),
        run_dir=root / f"r{i}", batch_size=16, torch_threads=1, checkpoint_every=50, metrics_interval_s=0.1,
    )
    h = start_run(cfg)
    c = h.client()
    try:
        wait(lambda: c.status()["step"] >= 170)
        died = c.status()["step"]
        pid = ray.get(h.trainer.pid.remote())
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait(lambda: c.status()["status"] == "recovering", every=0.005)
        restored: list[int] = []

        def trains_again() -> bool:
            # A step completed after the restore: the step moved off the checkpoint's (seen
            # once the restarted trainer reports), or the recovery is already over.
            s = c.status()
            if s["status"] != "recovering":
                return True
            if s["step"] < died:
                restored.append(s["step"])
            return bool(restored) and s["step"] != restored[0]

        wait(trains_again, every=0.005)
        training = time.monotonic() - t0
        wait(lambda: [r for r in c.commands(limit=5) if r["kind"] == "recovered"], every=0.005)
        caught_up = time.monotonic() - t0

        cpid = ray.get(h.controller.pid.remote())
        t1 = time.monotonic()
        os.kill(cpid, signal.SIGKILL)
        c.status()  # retried by Ray until the restarted controller answers
        served = time.monotonic() - t1
        rec = c.wait(c.send("update_optimizer", params={"lr": 5e-4}), timeout=120)
        applied = time.monotonic() - t1
        assert rec.status.value == "applied", rec
        return {"trainer_training_again_s": training, "trainer_caught_up_s": caught_up,
                "controller_served_s": served, "controller_command_applied_s": applied, "died_at_step": died}
    finally:
        h.shutdown()


def worker_pass(root: Path, i: int) -> float:
    """2 DDP workers; rank 1's process SIGKILLed: seconds until the worker group is back
    where it died (the recovery event)."""
    from ray.util.state import list_actors

    cfg = RunConfig(
        name=f"bench-recovery-w-{os.getpid()}-{i}", workers=2,
        task=TaskSpec(target="ray_interactive.examples.regression:RegressionTask"),
        run_dir=root / f"w{i}", batch_size=16, torch_threads=1, checkpoint_every=50, metrics_interval_s=0.1,
    )
    h = start_run(cfg)
    c = h.client()
    try:
        wait(lambda: c.status()["step"] >= 170)
        workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
        t0 = time.monotonic()
        os.kill(max(a["pid"] for a in workers), signal.SIGKILL)
        wait(lambda: [r for r in c.commands(limit=5) if r["kind"] == "recovered"], timeout=300, every=0.02)
        return time.monotonic() - t0
    finally:
        h.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--worker-passes", type=int, default=2)
    a = p.parse_args()
    info = machine()
    ray.init(num_cpus=4, include_dashboard=True, namespace="ray_interactive", log_to_driver=False)
    passes, workers = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.passes):
            passes.append(one_pass(Path(tmp), i))
            print(passes[-1], flush=True)
        for i in range(a.worker_passes):
            workers.append(worker_pass(Path(tmp), i))
            print(f"2 workers, rank lost -> recovered: {workers[-1]:.1f} s", flush=True)

    def col(k: str) -> str:
        xs = [q[k] for q in passes]
        return f"**{statistics.median(xs):.2f} s** median, range {min(xs):.2f}-{max(xs):.2f}"

    md = "\n".join([
        "## Recovery time (runs that heal themselves)",
        "",
        f"`python benchmarks/bench_recovery.py` on {info['cpus']} CPUs, load {info['loadavg_1m_at_start']} before the "
        f"run, {info['date']}, commit {info['commit']}; {len(passes)} passes, each a fresh regression run "
        f"(checkpoint every 50 steps, ~2 ms steps) killed at steps {min(q['died_at_step'] for q in passes)}-"
        f"{max(q['died_at_step'] for q in passes)}, on a local Ray.",
        "",
        f"- Trainer SIGKILLed -> training again (a recomputed step completed): {col('trainer_training_again_s')}; "
        f"-> caught up (back at the step it died at, held commands released): {col('trainer_caught_up_s')}. "
        "Target <= 30 s.",
        f"- Controller SIGKILLed -> a client's status call answered: {col('controller_served_s')}; "
        f"-> a command sent after the kill applied: {col('controller_command_applied_s')}.",
        *([f"- 2 DDP workers, one worker process SIGKILLed -> the worker group back where it died: "
           f"{', '.join(f'{w:.1f}' for w in workers)} s ({len(workers)} passes; most of it is Ray Train starting "
           "a new worker group, ~13 s here)."] if workers else []),
        "",
        "Leaves out: a lost node (Ray must also find a place for the actor), a big model's checkpoint load, "
        "and restarts with a GPU; the restart time is mostly Ray starting a worker process and importing torch.",
    ])
    save("recovery", {"machine": info, "passes": passes, "workers_recovered_s": workers}, md)


if __name__ == "__main__":
    main()
