"""Training throughput: the interactive trainer actor against a bare PyTorch loop.

Both loops run in Ray actors with the same torch threads, model, batch size, optimizer and
gradient clipping, and both stay alive for the whole measurement. They take turns in
short bursts (bare burst, interactive burst, bare, ...): this 2-core VM's speed drifts by
±30 % over seconds, so only bursts close in time compare fairly. The interactive run is
held between its bursts with its own ``pause``/``resume`` commands. During its bursts it
has everything on: Arrow batches prefetched from the buffer actor, metrics sent every
0.5 s, and a client steering like a person with a dashboard open (status and a 500-point
metrics query every second, an lr command every two seconds). Throughput counts the steps
inside each burst from their own timestamps; the figure is the median of the per-pair
ratios.

    python benchmarks/bench_throughput.py [--bursts 12] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import machine, median, percentile, save  # noqa: E402

from ray_interactive.core.config import RunConfig, TaskSpec  # noqa: E402
from ray_interactive.examples.regression import RegressionTask, columns_to_tensors  # noqa: E402
from ray_interactive.runtime.launch import start_run  # noqa: E402

TASK = "ray_interactive.examples.regression:RegressionTask"
SIZES = {  # ~5 ms and ~50 ms steps on one thread of the 2-core dev machine
    "small": {"task": {"in_dim": 256, "width": 384, "depth": 2, "rows": 8192}, "batch": 64, "burst_s": 1.5},
    "large": {"task": {"in_dim": 256, "width": 1024, "depth": 4, "rows": 8192}, "batch": 128, "burst_s": 3.0},
}


@ray.remote(num_cpus=1)
class BareLoop:
    """The baseline: the same model and data, nothing interactive."""

    def __init__(self, task_kwargs: dict[str, Any], batch: int, threads: int) -> None:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        task = RegressionTask(**task_kwargs)
        self.model = task.build_model()
        self.opt = task.build_optimizer(self.model, 1e-3)
        self.x, self.y = columns_to_tensors(task.data_sources()[0].table, torch.device("cpu"))
        self.gen = torch.Generator().manual_seed(0)
        self.batch = batch

    def burst(self, seconds: float) -> list[float]:
        """Train for ``seconds``; the end time of every step."""
        stamps: list[float] = []
        end = time.time() + seconds
        while not stamps or stamps[-1] < end:
            idx = torch.randint(0, len(self.x), (self.batch,), generator=self.gen)
            loss = F.mse_loss(self.model(self.x[idx]).squeeze(-1), self.y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            stamps.append(time.time())
        return stamps


def rate(stamps: list[float]) -> float:
    """Steps per second between the first and last step of a burst."""
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


class Steering:
    """A person with the dashboard open, active only while ``on`` is set."""

    def __init__(self, client: Any) -> None:
        self.client, self.on, self.done, self.commands = client, threading.Event(), threading.Event(), 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        tick = 0
        while not self.done.wait(1.0):
            if not self.on.is_set():
                continue
            self.client.status()
            self.client.metrics(keys=["loss", "lr", "grad_norm"], max_points=500)
            tick += 1
            if tick % 2 == 0:
                self.client.send("update_optimizer", params={"lr": 1e-3 if tick % 4 else 9e-4})
                self.commands += 1


_ROLES = (("TrainerActor", "trainer"), ("BufferActor", "buffer"), ("ControllerActor", "controller"),
          ("BareLoop", "bare loop"), ("raylet", "raylet"), ("gcs_server", "GCS"))


def _role(proc: psutil.Process) -> str:
    if proc.pid == os.getpid():
        return "driver (steering client)"
    try:
        text = " ".join(proc.cmdline()[:3]) or proc.name()
    except (psutil.Error, OSError):
        return "other"
    return next((role for key, role in _ROLES if key in text), "other Ray" if "ray" in text else "other")


class CpuMeter:
    """CPU seconds per process role (trainer, buffer, controller, raylet, ...) between
    :meth:`start` and :meth:`stop`, summed over bursts; every process on the machine counts."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall = 0.0
        self._begin: dict[int, tuple[str, float]] = {}
        self._t0 = 0.0

    @staticmethod
    def _sample() -> dict[int, tuple[str, float]]:
        out = {}
        for proc in psutil.process_iter():
            try:
                t = proc.cpu_times()
                out[proc.pid] = (_role(proc), t.user + t.system)
            except (psutil.Error, OSError):
                continue
        return out

    def start(self) -> None:
        self._begin, self._t0 = self._sample(), time.perf_counter()

    def stop(self) -> None:
        end, self.wall = self._sample(), self.wall + time.perf_counter() - self._t0
        for pid, (role, t) in end.items():
            spent = t - self._begin[pid][1] if pid in self._begin else t  # a process born since: all of it
            self.cpu[role] = self.cpu.get(role, 0.0) + max(0.0, spent)

    def shares(self) -> dict[str, float]:
        """Each role's CPU as a share of the whole machine (all cores) over the measured time."""
        total = self.wall * (os.cpu_count() or 1)
        return {role: cpu / total for role, cpu in sorted(self.cpu.items(), key=lambda kv: -kv[1])} if total else {}


def measure(name: str, bursts: int, threads: int, tmp: Path, steer: bool) -> dict[str, Any]:
    size = SIZES[name]
    bare = BareLoop.remote(size["task"], size["batch"], threads)
    config = RunConfig(
        name=f"bench-{name}",
        task=TaskSpec(target=TASK, kwargs=size["task"]),
        run_dir=tmp / name,
        batch_size=size["batch"],
        torch_threads=threads,
        lr=1e-3,
        start_paused=True,
    )
    handle = start_run(config)
    client = handle.client()
    steering = Steering(client)
    ray.get(bare.burst.remote(0.5))  # warm up both
    client.wait(client.send("resume"))
    time.sleep(0.5)
    client.wait(client.send("pause"))
    pairs = []
    cpu_bare, cpu_inter = CpuMeter(), CpuMeter()
    for i in range(bursts):
        cpu_bare.start()
        b = rate(ray.get(bare.burst.remote(size["burst_s"])))
        cpu_bare.stop()
        start = client.wait(client.send("resume")).applied_step
        cpu_inter.start()
        if steer:
            steering.on.set()
        time.sleep(size["burst_s"])
        steering.on.clear()
        cpu_inter.stop()
        stop = client.wait(client.send("pause")).applied_step
        m = client.metrics(keys=["loss"], since=start + 1)["loss"]
        stamps = [t for s, t in zip(m["step"], m["time"]) if start + 1 <= s <= stop]
        inter = rate(stamps)
        pairs.append((b, inter))
        print(f"{name} burst {i}: bare {b:.1f} steps/s, interactive {inter:.1f} steps/s, ratio {inter / b:.3f}", flush=True)
    steering.done.set()
    handle.shutdown()
    ray.kill(bare)
    ratios = [i / b for b, i in pairs]
    return {
        "size": name,
        "params": sum(p.numel() for p in RegressionTask(**size["task"]).build_model().parameters()),
        "batch": size["batch"],
        "bare_steps_s": [b for b, _ in pairs],
        "interactive_steps_s": [i for _, i in pairs],
        "step_ms_bare": 1000 / median([b for b, _ in pairs]),
        "ratios": ratios,
        "median_ratio": median(ratios),
        "ratio_p25": percentile(ratios, 0.25),
        "ratio_p75": percentile(ratios, 0.75),
        "commands_sent_while_steering": steering.commands,
        "cpu_share_interactive": cpu_inter.shares(),
        "cpu_share_bare": cpu_bare.shares(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bursts", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", nargs="*", default=list(SIZES))
    ap.add_argument("--no-steer", action="store_true", help="no steering client during the interactive bursts")
    args = ap.parse_args()
    info = machine()
    ray.init(include_dashboard=False, log_to_driver=False, namespace="ray_interactive")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, args.bursts, args.threads, Path(tmp), not args.no_steer) for name in args.sizes]
    ray.shutdown()
    result = {"machine": info, "threads": args.threads, "bursts": args.bursts, "steered": not args.no_steer, "rows": rows}
    md = [
        "## Training throughput: interactive trainer vs bare PyTorch loop",
        "",
        f"`python benchmarks/bench_throughput.py --bursts {args.bursts} --threads {args.threads}"
        f"{' --no-steer' if args.no_steer else ''}` on {info['cpus']} CPUs, load {info['loadavg_1m_at_start']} "
        f"at start, {info['date']}. Alternating bursts of the two loops; ratio = interactive / bare steps/s of "
        "adjacent bursts; median and quartiles over the pairs."
        + (" The interactive run was steered during its bursts (status + metrics query each second, an lr "
           "command every two seconds)." if not args.no_steer else ""),
        "",
        "| model | params | batch | bare step | bare steps/s (median) | interactive steps/s (median) | ratio (median) | ratio p25-p75 | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        target = ">= 0.95" if r["size"] == "small" else ">= 0.99"
        md.append(
            f"| {r['size']} | {r['params']:,} | {r['batch']} | {r['step_ms_bare']:.1f} ms | "
            f"{median(r['bare_steps_s']):.1f} | {median(r['interactive_steps_s']):.1f} | "
            f"**{r['median_ratio']:.3f}** | {r['ratio_p25']:.3f}-{r['ratio_p75']:.3f} | {target} |"
        )
    md += ["", "Where the CPU goes (share of the whole machine, all cores, during the bursts; every process counted "
           "by role, `other` is whatever else ran on the machine):", ""]
    for r in rows:
        for label, shares in (("interactive", r["cpu_share_interactive"]), ("bare", r["cpu_share_bare"])):
            md.append(f"- {r['size']}, {label} bursts: "
                      + ", ".join(f"{role} {100 * v:.1f}%" for role, v in shares.items() if v >= 0.001))
    save("throughput" + ("_unsteered" if args.no_steer else ""), result, "\n".join(md))


if __name__ == "__main__":
    main()
