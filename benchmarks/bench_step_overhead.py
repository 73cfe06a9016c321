"""The interactive machinery's own cost per step, in the trainer's thread.

The cross-process throughput benchmark is at the mercy of this 2-core VM's noise (±20 %
between seconds). This one runs in one process and measures what the trainer adds to
every step over a bare loop: batch hand-off and Arrow -> tensor collate, the schedule,
the grad-norm metric, metric rows, the command check. A tiny model makes the fixed cost
visible; the buffer's sampling (which the buffer actor does in its own process under Ray)
is measured separately. Rounds alternate; medians are reported.

    python benchmarks/bench_step_overhead.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import machine, percentile, save  # noqa: E402

from ray_interactive.buffer import DataBuffer  # noqa: E402
from ray_interactive.config import RunConfig, TaskSpec  # noqa: E402
from ray_interactive.examples.regression import columns_to_tensors  # noqa: E402
from ray_interactive.feeds import LocalFeed  # noqa: E402
from ray_interactive.task import load_task  # noqa: E402
from ray_interactive.trainer import Reporter, Trainer  # noqa: E402

TASK = "ray_interactive.examples.regression:RegressionTask"
ROUNDS = 15


def per_step_us(fn: Callable[[], object], steps: int = 2000) -> float:
    for _ in range(50):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps * 1e6


def main() -> None:
    torch.set_num_threads(1)
    info = machine()
    kwargs = {"in_dim": 16, "width": 8, "depth": 1, "rows": 8192, "dropout": 0.0}
    cfg = RunConfig(
        name="overhead",
        task=TaskSpec(target=TASK, kwargs=kwargs),
        run_dir=Path(tempfile.mkdtemp()),
        batch_size=64,
        torch_threads=1,
    )
    task = load_task(cfg.task.target, cfg.task.kwargs)
    buffer = DataBuffer(task.data_sources(), seed=0)
    # Batches drawn ahead, as the buffer actor does in its own process; refilled outside the timing.
    prefetched = LocalFeed(buffer, 64, per_request=4096)
    trainer = Trainer(cfg, task, lambda _: prefetched, Reporter(lambda *a: None))

    model = task.build_model()
    opt = task.build_optimizer(model, 1e-3)
    x, y = columns_to_tensors(task.data_sources()[0].table, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)

    def bare() -> None:
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = F.mse_loss(model(x[idx]).squeeze(-1), y[idx])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def interactive() -> None:  # one turn of Trainer.run's loop (the health guard's check included)
        if trainer._train_step(trainer._next_batches()):
            trainer._after_step()

    def sample() -> None:
        buffer.next_batches(64, 1)

    res: dict[str, list[float]] = {"bare": [], "interactive": [], "sampling": []}
    deltas = []
    for _ in range(ROUNDS):
        prefetched._ready.clear()
        prefetched.next()  # refill 4096 batches outside the timing
        res["bare"].append(per_step_us(bare, 1000))
        res["interactive"].append(per_step_us(interactive, 1000))
        res["sampling"].append(per_step_us(sample, 200))
        deltas.append(res["interactive"][-1] - res["bare"][-1])
    med = {k: statistics.median(v) for k, v in res.items()}
    extra = statistics.median(deltas)
    q1, q3 = percentile(deltas, 0.25), percentile(deltas, 0.75)
    md = "\n".join(
        [
            "## Per-step cost of the interactive machinery (trainer thread, in-process)",
            "",
            f"`python benchmarks/bench_step_overhead.py` on {info['cpus']} CPUs, load {info['loadavg_1m_at_start']}, "
            f"{info['date']}. A tiny model (16-8-1 MLP, batch 64) so the fixed cost shows; {ROUNDS} alternating rounds "
            "of 1000 steps each; the added cost is the median (and quartiles) of the per-round differences.",
            "",
            "| bare step | interactive step | added per step (p25-p75) | as share of a 5 ms step | of a 50 ms step | buffer sampling per batch (buffer actor) |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {med['bare']:.0f} µs | {med['interactive']:.0f} µs | **{extra:.0f} µs** ({q1:.0f} to {q3:.0f}) | "
            f"{extra / 5000:.1%} | {extra / 50000:.2%} | {med['sampling']:.0f} µs |",
        ]
    )
    save("step_overhead", {"machine": info, "us": res, "median_us": med, "added_us": extra, "deltas_us": deltas}, md)


if __name__ == "__main__":
    main()
