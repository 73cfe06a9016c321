"""The interactive machinery's own cost per step, in the trainer's thread (our Trainer's
loop, and ``s.step()`` of a plain loop steered with ``ri.steer``).

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

import ray  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import machine, percentile, save  # noqa: E402

import ray_interactive as ri  # noqa: E402
from ray_interactive.core.config import RunConfig, TaskSpec  # noqa: E402
from ray_interactive.core.task import load_task  # noqa: E402
from ray_interactive.data.buffer import DataBuffer  # noqa: E402
from ray_interactive.data.feeds import LocalFeed  # noqa: E402
from ray_interactive.examples.regression import columns_to_tensors  # noqa: E402
from ray_interactive.train.trainer import Reporter, Trainer  # noqa: E402

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
            trainer.core.after_step()

    def sample() -> None:
        buffer.next_batches(64, 1)

    # The same bare loop, steered: s.step() does clip, optimizer step, schedule, metrics, commands.
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    model2 = task.build_model()
    opt2 = task.build_optimizer(model2, 1e-3)
    session = ri.steer("overhead-loop", model2, opt2, grad_clip=1.0, run_dir=Path(tempfile.mkdtemp())).start()

    def steered() -> None:
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = F.mse_loss(model2(x[idx]).squeeze(-1), y[idx])
        loss.backward()
        session.step(loss=loss)

    res: dict[str, list[float]] = {"bare": [], "interactive": [], "sampling": [], "plain_loop": []}
    deltas, loop_deltas = [], []
    for _ in range(ROUNDS):
        prefetched._ready.clear()
        prefetched.next()  # refill 4096 batches outside the timing
        res["bare"].append(per_step_us(bare, 1000))
        res["interactive"].append(per_step_us(interactive, 1000))
        res["sampling"].append(per_step_us(sample, 200))
        res["plain_loop"].append(per_step_us(steered, 1000))
        deltas.append(res["interactive"][-1] - res["bare"][-1])
        loop_deltas.append(res["plain_loop"][-1] - res["bare"][-1])
    session.close()
    med = {k: statistics.median(v) for k, v in res.items()}
    extra = statistics.median(deltas)
    q1, q3 = percentile(deltas, 0.25), percentile(deltas, 0.75)
    loop_extra = statistics.median(loop_deltas)
    l1, l3 = percentile(loop_deltas, 0.25), percentile(loop_deltas, 0.75)
    md = "\n".join(
        [
            "## Per-step cost of the interactive machinery (trainer thread, in-process)",
            "",
            f"`python benchmarks/bench_step_overhead.py` on {info['cpus']} CPUs, load {info['loadavg_1m_at_start']}, "
            f"{info['date']}. A tiny model (16-8-1 MLP, batch 64) so the fixed cost shows; {ROUNDS} alternating rounds "
            "of 1000 steps each; the added cost is the median (and quartiles) of the per-round differences.",
            "",
            "| loop | bare step | steered step | added per step (p25-p75) | as share of a 5 ms step | of a 50 ms step |",
            "|---|---:|---:|---:|---:|---:|",
            f"| our Trainer (batch hand-off, collate, schedule, clip, health check, metrics, commands) | "
            f"{med['bare']:.0f} µs | {med['interactive']:.0f} µs | **{extra:.0f} µs** ({q1:.0f} to {q3:.0f}) | "
            f"{extra / 5000:.1%} | {extra / 50000:.2%} |",
            f"| plain loop, `s.step(loss=loss)` (clip, health check, schedule, metrics, commands) | "
            f"{med['bare']:.0f} µs | {med['plain_loop']:.0f} µs | **{loop_extra:.0f} µs** ({l1:.0f} to {l3:.0f}) | "
            f"{loop_extra / 5000:.1%} | {loop_extra / 50000:.2%} |",
            "",
            f"Buffer sampling per batch (done by the buffer actor in its own process, not in the step): "
            f"{med['sampling']:.0f} µs. The bare loop clips too (`clip_grad_norm_`), so clipping is not counted as "
            "overhead; the steered loops also read the loss and gradient norm back (the health guard).",
        ]
    )
    save("step_overhead", {"machine": info, "us": res, "median_us": med, "added_us": extra, "deltas_us": deltas,
                           "plain_loop_added_us": loop_extra, "plain_loop_deltas_us": loop_deltas}, md)


if __name__ == "__main__":
    main()
