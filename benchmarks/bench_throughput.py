"""Training throughput: the interactive trainer actor against a bare PyTorch loop.

Both run in a Ray actor with the same torch threads, model, batch size, optimizer and
gradient clipping. The interactive run has everything on: Arrow batches prefetched from
the buffer actor, metrics sent every 0.5 s, and a driver that steers like a person with
a dashboard open (status and a 500-point metrics query every second, an lr command every
two seconds). Throughput is taken from per-step timestamps after a warm-up, rounds are
interleaved (bare, interactive, bare, ...) and the medians are compared.

    python benchmarks/bench_throughput.py [--rounds 3] [--threads 1]
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

import ray  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import machine, median, save  # noqa: E402

from ray_interactive.config import RunConfig, TaskSpec  # noqa: E402
from ray_interactive.examples.regression import RegressionTask, columns_to_tensors  # noqa: E402
from ray_interactive.launch import start_run  # noqa: E402

TASK = "ray_interactive.examples.regression:RegressionTask"
SIZES = {  # tuned for ~5 ms and ~50 ms steps on one thread of the 2-core dev machine
    "small": {"task": {"in_dim": 256, "width": 384, "depth": 2, "rows": 8192}, "batch": 64, "steps": 1000},
    "large": {"task": {"in_dim": 256, "width": 1024, "depth": 4, "rows": 8192}, "batch": 128, "steps": 150},
}


@ray.remote(num_cpus=1)
class BareLoop:
    """The baseline: the same model and data, nothing interactive."""

    def run(self, task_kwargs: dict[str, Any], batch: int, steps: int, threads: int, seed: int) -> list[float]:
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        task = RegressionTask(**task_kwargs)
        model = task.build_model()
        opt = task.build_optimizer(model, 1e-3)
        x, y = columns_to_tensors(task.data_sources()[0].table, torch.device("cpu"))
        gen = torch.Generator().manual_seed(seed)
        stamps = []
        for _ in range(steps):
            idx = torch.randint(0, len(x), (batch,), generator=gen)
            loss = F.mse_loss(model(x[idx]).squeeze(-1), y[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            stamps.append(time.time())
        return stamps


def steps_per_s(stamps: list[float], warmup: float = 0.1) -> float:
    w = max(1, int(len(stamps) * warmup))
    return (len(stamps) - w) / (stamps[-1] - stamps[w - 1])


def interactive(size: dict[str, Any], threads: int, seed: int, tmp: Path) -> tuple[float, int]:
    config = RunConfig(
        name=f"bench-{seed}-{time.monotonic_ns()}",
        task=TaskSpec(target=TASK, kwargs=size["task"]),
        run_dir=tmp / f"run-{time.monotonic_ns()}",
        batch_size=size["batch"],
        max_steps=size["steps"],
        torch_threads=threads,
        seed=seed,
        lr=1e-3,
    )
    handle = start_run(config)
    client = handle.client()
    done = threading.Event()
    commands = 0

    def steer() -> None:  # a person with the dashboard open
        nonlocal commands
        tick = 0
        while not done.wait(1.0):
            client.status()
            client.metrics(keys=["loss", "lr", "grad_norm"], max_points=500)
            tick += 1
            if tick % 2 == 0:
                client.send("update_optimizer", params={"lr": 1e-3 if tick % 4 else 9e-4})
                commands += 1

    t = threading.Thread(target=steer, daemon=True)
    t.start()
    handle.wait()
    done.set()
    t.join()
    stamps = client.metrics(keys=["loss"])["loss"]["time"]
    handle.shutdown()
    return steps_per_s(stamps), commands


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", nargs="*", default=list(SIZES))
    args = ap.parse_args()
    info = machine()
    ray.init(include_dashboard=False, log_to_driver=False, namespace="ray_interactive")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes:
            size = SIZES[name]
            bare, inter, cmds = [], [], []
            for r in range(args.rounds):
                stamps = ray.get(BareLoop.remote().run.remote(size["task"], size["batch"], size["steps"], args.threads, r))
                bare.append(steps_per_s(stamps))
                sps, n = interactive(size, args.threads, r, Path(tmp))
                inter.append(sps)
                cmds.append(n)
                print(f"{name} round {r}: bare {bare[-1]:.1f} steps/s, interactive {inter[-1]:.1f} steps/s", flush=True)
            rows.append(
                {
                    "size": name,
                    "params": sum(p.numel() for p in RegressionTask(**size["task"]).build_model().parameters()),
                    "batch": size["batch"],
                    "step_ms_bare": 1000 / median(bare),
                    "bare_steps_s": bare,
                    "interactive_steps_s": inter,
                    "ratio_of_medians": median(inter) / median(bare),
                    "commands_per_run": cmds,
                }
            )
    ray.shutdown()
    result = {"machine": info, "threads": args.threads, "rounds": args.rounds, "rows": rows}
    md = [
        "## Training throughput: interactive trainer vs bare PyTorch loop",
        "",
        f"`python benchmarks/bench_throughput.py --rounds {args.rounds} --threads {args.threads}` on "
        f"{info['cpus']} CPUs, load {info['loadavg_1m_at_start']} at start, {info['date']}. "
        "Medians of interleaved rounds; the interactive run was steered during measurement "
        "(status + metrics query each second, an lr command every two seconds).",
        "",
        "| model | params | batch | bare step | bare steps/s | interactive steps/s | ratio | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        target = ">= 0.95" if r["size"] == "small" else ">= 0.99"
        md.append(
            f"| {r['size']} | {r['params']:,} | {r['batch']} | {r['step_ms_bare']:.1f} ms | "
            f"{median(r['bare_steps_s']):.1f} | {median(r['interactive_steps_s']):.1f} | "
            f"**{r['ratio_of_medians']:.3f}** | {target} |"
        )
    save("throughput", result, "\n".join(md))


if __name__ == "__main__":
    main()
