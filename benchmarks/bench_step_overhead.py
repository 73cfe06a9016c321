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
from ray_interactive.core.reporting import Reporter  # noqa: E402
from ray_interactive.core.task import load_task  # noqa: E402
from ray_interactive.data.buffer import DataBuffer  # noqa: E402
from ray_interactive.data.feeds import LocalFeed  # noqa: E402
from ray_interactive.examples.regression import columns_to_tensors  # noqa: E402
from ray_interactive.train.trainer import Trainer  # noqa: E402

TASK = "ray_interactive.examples.regression:RegressionTask"
ROUNDS = 15


def per_step_us(fn: Callable[[], object], steps: int = 2000) -> float:
    for _ in range(50):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps * 1e6


def gpt2_sampled_step(rounds: int = 5, steps: int = 6) -> dict[str, float]:
    """A sampled step's cost on the case studies' GPT-2 (6.8M parameters, batch 8 x 32 tokens):
    the same bare step with and without ModuleHealth sampling it, alternating rounds."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from ray_interactive.core.module_health import ModuleHealth

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=32, n_embd=128, n_layer=2, n_head=4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    health = ModuleHealth(model, every=1)
    x = torch.randint(0, 50257, (8, 33))

    def one(sampled: bool) -> None:
        if sampled:
            health.arm_for(1)
        loss = model(input_ids=x[:, :-1], labels=x[:, 1:]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if sampled:
            health.grads_ready()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sampled:
            for v in health.collect().values():
                float(v)  # read back, as a report does

    bare, sampled = [], []
    for _ in range(rounds):
        for flag, out in ((False, bare), (True, sampled)):
            one(flag)
            t0 = time.perf_counter()
            for _ in range(steps):
                one(flag)
            out.append((time.perf_counter() - t0) / steps * 1e3)
    return {"bare_ms": statistics.median(bare), "sampled_ms": statistics.median(sampled),
            "added_ms": statistics.median([s - b for s, b in zip(sampled, bare)]), "groups": len(health.groups)}


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
    trainer = Trainer(cfg, task, lambda _: prefetched, Reporter(None))
    # The same Trainer with per-module health sampled every 50 steps, and on every step (the
    # cost of one sampled step): the same prefetched batches.
    sampled = {n: Trainer(cfg.model_copy(update={"diagnostics_every": n, "run_dir": Path(tempfile.mkdtemp())}), task,
                          lambda _: prefetched, Reporter(None)) for n in (50, 1)}

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

    def turn(t: Trainer) -> None:  # one turn of Trainer.run's loop (the health guard's check included)
        if t._train_step(t._next_batches()):
            t.core.after_step()

    def interactive() -> None:
        turn(trainer)

    def health_50() -> None:
        turn(sampled[50])

    def health_1() -> None:
        turn(sampled[1])

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

    res: dict[str, list[float]] = {"bare": [], "interactive": [], "sampling": [], "plain_loop": [],
                                   "health_50": [], "health_1": []}
    deltas, loop_deltas, h50_deltas, h1_deltas = [], [], [], []
    for _ in range(ROUNDS):
        prefetched._ready.clear()
        prefetched.next()  # refill 4096 batches outside the timing
        res["bare"].append(per_step_us(bare, 1000))
        res["interactive"].append(per_step_us(interactive, 1000))
        res["sampling"].append(per_step_us(sample, 200))
        res["plain_loop"].append(per_step_us(steered, 1000))
        res["health_50"].append(per_step_us(health_50, 1000))
        res["health_1"].append(per_step_us(health_1, 200))
        h50_deltas.append(res["health_50"][-1] - res["interactive"][-1])
        h1_deltas.append(res["health_1"][-1] - res["interactive"][-1])
        deltas.append(res["interactive"][-1] - res["bare"][-1])
        loop_deltas.append(res["plain_loop"][-1] - res["bare"][-1])
    session.close()
    med = {k: statistics.median(v) for k, v in res.items()}
    extra = statistics.median(deltas)
    q1, q3 = percentile(deltas, 0.25), percentile(deltas, 0.75)
    loop_extra = statistics.median(loop_deltas)
    l1, l3 = percentile(loop_deltas, 0.25), percentile(loop_deltas, 0.75)
    h50, h1 = statistics.median(h50_deltas), statistics.median(h1_deltas)
    gpt2 = gpt2_sampled_step()
    groups = len(sampled[1].core.diagnostics.groups)  # type: ignore[union-attr]
    md = "\n".join(
        [
            "## Per-step cost of the interactive machinery (trainer thread, in-process)",
            "",
            f"`python benchmarks/bench_step_overhead.py` on {info['cpus']} CPUs, load {info['loadavg_1m_at_start']}, "
            f"{info['date']}, commit {info['commit']}. A tiny model (16-8-1 MLP, batch 64) so the fixed cost shows; {ROUNDS} alternating rounds "
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
            f"| our Trainer + per-module health every 50 steps (`diagnostics_every=50`) | "
            f"{med['interactive']:.0f} µs | {med['health_50']:.0f} µs | **{h50:.0f} µs** over our Trainer "
            f"({percentile(h50_deltas, 0.25):.0f} to {percentile(h50_deltas, 0.75):.0f}) | {h50 / 5000:.1%} | "
            f"{h50 / 50000:.2%} |",
            f"| our Trainer + per-module health on every step (`diagnostics_every=1`: the cost of one sampled step) | "
            f"{med['interactive']:.0f} µs | {med['health_1']:.0f} µs | **{h1:.0f} µs** over our Trainer "
            f"({percentile(h1_deltas, 0.25):.0f} to {percentile(h1_deltas, 0.75):.0f}) | {h1 / 5000:.1%} | "
            f"{h1 / 50000:.2%} |",
            "",
            f"Per-module health here covers {groups} module groups (4 indicators each); a sampled step attaches "
            "forward hooks, copies the weights once and computes the norms; between samples it costs one "
            "integer test. A sampled step's cost grows with the parameter count (the weight copy and norms): on "
            f"the case studies' GPT-2 (6.8M parameters, {gpt2['groups']} groups, batch 8 x 32 tokens, in-process) "
            f"a bare step takes {gpt2['bare_ms']:.0f} ms and a sampled one {gpt2['sampled_ms']:.0f} ms "
            f"(+{gpt2['added_ms']:.1f} ms, {gpt2['added_ms'] / gpt2['bare_ms']:.1%}; medians of 5 alternating rounds "
            f"of 6 steps), i.e. {gpt2['added_ms'] / gpt2['bare_ms'] / 50:.2%} of the run's time when sampled every "
            "50 steps.",
            "",
            f"Buffer sampling per batch (done by the buffer actor in its own process, not in the step): "
            f"{med['sampling']:.0f} µs. The bare loop clips too (`clip_grad_norm_`), so clipping is not counted as "
            "overhead; the steered loops also read the loss and gradient norm back (the health guard).",
        ]
    )
    save("step_overhead", {"machine": info, "us": res, "median_us": med, "added_us": extra, "deltas_us": deltas,
                           "plain_loop_added_us": loop_extra, "plain_loop_deltas_us": loop_deltas,
                           "health_50_added_us": h50, "health_1_added_us": h1, "health_50_deltas_us": h50_deltas,
                           "health_1_deltas_us": h1_deltas, "gpt2_sampled_step": gpt2}, md)


if __name__ == "__main__":
    main()
