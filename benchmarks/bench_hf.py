"""Hugging Face ``Trainer`` steered by callbacks: what the callback costs, and how soon a
command reaches an optimizer step.

1. Throughput: the same Trainer (tiny GPT-2 on WikiText-2, ~50 ms steps on this CPU) with
   and without ``ri.hf.steer``, in paired runs that alternate which goes first; the ratio
   (steered / plain steps per second, from each run's median step period) per pair, median
   and range; and the time spent inside our callback's hooks per step.
2. Command latency: while a steered Trainer runs, ``update_optimizer`` commands with a
   fresh lr each are sent at random moments; a callback notes when an optimizer step first
   uses each lr. Latency = that moment - submission; also, whether that optimizer step was
   the first after the submission (the very next step). Split in two: submission -> the
   command reaches the loop's steering core (Ray hops, the controller's log, the long poll),
   and from there -> the optimizer step that uses it (waiting for the step's hook).
3. Start-up: a 3-step ``train()`` with and without ``ri.hf.steer`` (Ray already up, in this
   process), alternating; the time in our ``on_train_begin`` and ``on_train_end``.

    python benchmarks/bench_hf.py [--data ../shared/data] [--pairs 5] [--commands 120] [--startup-pairs 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
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
from _common import machine, percentile, save  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

import ray_interactive as ri  # noqa: E402
from ray_interactive.core.steering import Steering  # noqa: E402
from ray_interactive.examples.hf_wikitext import build_trainer  # noqa: E402

WARMUP = 30  # steps left out of the timing (start-up: first batches, allocator, the run's actor)
STEER: dict[str, Any] = {}  # RunConfig fields for the latency run (experiments)
MODEL = {"n_layer": 2, "n_embd": 32, "block": 32, "batch_size": 3, "train_chars": 300_000, "eval_chars": 8_000}


class StepClock(TrainerCallback):
    """Step start/end times and the lr each optimizer step used (HF's own hooks)."""

    def __init__(self) -> None:
        self.begin: list[float] = []
        self.end: list[float] = []
        self.used: list[tuple[float, float, int]] = []  # (time, lr, step)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.begin.append(time.perf_counter())

    def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kw: Any) -> None:
        # after optimizer.step(), before HF's scheduler step: the lr this step used
        self.used.append((time.perf_counter(), optimizer.param_groups[0]["lr"], state.global_step))

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.end.append(time.perf_counter())


HOOKS = ("on_step_begin", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end", "on_log")


def timed(callback: Any, spent: dict[str, float], hooks: tuple[str, ...] = HOOKS) -> None:
    """Add the time spent in each of the callback's ``hooks`` to ``spent[hook]``."""
    for hook in hooks:
        inner = getattr(callback, hook)
        spent.setdefault(hook, 0.0)

        def wrapper(*args: Any, _inner: Any = inner, _hook: str = hook, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _inner(*args, **kw)
            finally:
                spent[_hook] += time.perf_counter() - t0

        setattr(callback, hook, wrapper)


def one_run(data: Path, steps: int, steered: bool, name: str) -> tuple[float, float | None]:
    """Steps/s (from the median step period over steps WARMUP..steps) and, steered, µs per
    step inside our callback."""
    clock = StepClock()
    spent: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(data, Path(tmp) / "out", max_steps=steps, callbacks=[clock], **MODEL)
        if steered:
            timed(ri.hf.steer(trainer, run=name, run_dir=Path(tmp) / "run"), spent)
        trainer.train()
    ends = clock.end[WARMUP:]
    # the median end-to-end period of a step (end to end: our hooks and HF's logging included),
    # robust to the few long stalls this VM has
    period = statistics.median(b - a for a, b in zip(ends, ends[1:]))
    return 1.0 / period, (sum(spent.values()) / steps * 1e6 if steered else None)


def throughput(data: Path, pairs: int, steps: int) -> dict[str, Any]:
    ratios, plain, steered, hook_us = [], [], [], []
    for i in range(pairs):
        order = [False, True] if i % 2 == 0 else [True, False]
        got = {s: one_run(data, steps, s, f"bench-hf-{i}") for s in order}
        plain.append(got[False][0])
        steered.append(got[True][0])
        hook_us.append(got[True][1])
        ratios.append(steered[-1] / plain[-1])
        print(f"pair {i}: plain {plain[-1]:.2f} steps/s, steered {steered[-1]:.2f} steps/s, ratio {ratios[-1]:.3f}, "
              f"{hook_us[-1]:.0f} µs/step in the callback", flush=True)
    return {"plain_steps_per_s": plain, "steered_steps_per_s": steered, "ratios": ratios, "callback_us_per_step": hook_us}


def startup(data: Path, pairs: int) -> dict[str, Any]:
    """Seconds for a 3-step ``train()`` plain and steered, and in our begin/end hooks."""
    plain, steered, begin, end = [], [], [], []
    for i in range(pairs):
        for steer in ([False, True] if i % 2 == 0 else [True, False]):
            with tempfile.TemporaryDirectory() as tmp:
                trainer = build_trainer(data, Path(tmp) / "out", max_steps=3, **MODEL)
                spent: dict[str, float] = {}
                if steer:
                    cb = ri.hf.steer(trainer, run=f"bench-hf-start-{i}", run_dir=Path(tmp) / "run")
                    timed(cb, spent, ("on_train_begin", "on_train_end"))
                t0 = time.perf_counter()
                trainer.train()
                took = time.perf_counter() - t0
            if steer:
                steered.append(took)
                begin.append(spent["on_train_begin"])
                end.append(spent["on_train_end"])
            else:
                plain.append(took)
        print(f"start-up pair {i}: plain {plain[-1]:.2f} s, steered {steered[-1]:.2f} s "
              f"(begin {begin[-1]:.2f} s, end {end[-1]:.2f} s)", flush=True)
    return {"plain_s": plain, "steered_s": steered, "on_train_begin_s": begin, "on_train_end_s": end}


def latency(data: Path, commands: int) -> dict[str, Any]:
    clock = StepClock()
    sent: dict[float, float] = {}  # lr -> submission time
    reached: dict[float, float] = {}  # lr -> when the loop's core had it
    deliver = Steering.deliver

    def noted(core: Steering, records: list[Any]) -> None:
        now = time.perf_counter()
        for r in records:
            cmd = r.command
            lr = cmd.params.get("lr") if cmd is not None and cmd.kind == "update_optimizer" else None
            if lr is not None:
                reached.setdefault(lr, now)
        deliver(core, records)

    Steering.deliver = noted  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(data, Path(tmp) / "out", max_steps=100_000, callbacks=[clock], **MODEL)
        ri.hf.steer(trainer, run="bench-hf-latency", run_dir=Path(tmp) / "run", **STEER)
        rng = random.Random(0)

        def drive() -> None:
            while True:
                try:
                    client = ri.connect("bench-hf-latency")
                    if client.status()["status"] == "running":
                        break
                except ri.RunNotFound:
                    pass
                time.sleep(0.1)
            time.sleep(1.0)
            for i in range(commands):
                time.sleep(rng.uniform(0.08, 0.16))  # at random points of a ~50 ms step, one command in use at a time
                lr = 1e-4 + i * 1e-6
                sent[lr] = time.perf_counter()
                rec = client.send("update_optimizer", params={"lr": lr})
                assert rec.status.value == "accepted", rec.message
            time.sleep(0.5)
            client.send("stop")

        thread = threading.Thread(target=drive, daemon=True)
        thread.start()
        trainer.train()
        thread.join(30)
    Steering.deliver = deliver  # type: ignore[method-assign]
    first_use: dict[float, tuple[float, int]] = {}
    for t, lr, step in clock.used:
        if lr in sent and lr not in first_use:
            first_use[lr] = (t, step)
    lat_ms, late_steps, reach_ms, wait_ms = [], [], [], []
    step_ms = statistics.median(e - b for b, e in zip(clock.begin, clock.end)) * 1000
    # the time between optimizer steps: what a command that just missed one waits for the next
    gaps = [(b[0] - a[0]) * 1000 for a, b in zip(clock.used[WARMUP:], clock.used[WARMUP + 1:])]
    for lr, t_sent in sent.items():
        if lr not in first_use:
            continue
        t_used, step = first_use[lr]
        lat_ms.append((t_used - t_sent) * 1000)
        if lr in reached:
            reach_ms.append((reached[lr] - t_sent) * 1000)
            wait_ms.append((t_used - reached[lr]) * 1000)
        # optimizer steps between the submission and the one that used it (0: the very next)
        late_steps.append(sum(1 for t, _, _ in clock.used if t_sent < t < t_used))
    return {"latency_ms": lat_ms, "steps_late": late_steps, "step_ms_median": step_ms,
            "reach_ms": reach_ms, "wait_ms": wait_ms, "optimizer_gap_ms": gaps,
            "sent": len(sent), "used": len(first_use)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    p.add_argument("--pairs", type=int, default=7)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--commands", type=int, default=120)
    p.add_argument("--startup-pairs", type=int, default=3)
    a = p.parse_args()
    info = machine()
    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, namespace="ray_interactive", log_to_driver=False)
    tp = throughput(a.data, a.pairs, a.steps)
    lat = latency(a.data, a.commands)
    st = startup(a.data, a.startup_pairs)
    r = tp["ratios"]
    ms = lat["latency_ms"]
    next_step = sum(1 for s in lat["steps_late"] if s <= 0) / max(1, len(lat["steps_late"]))
    step_ms = lat["step_ms_median"]
    period_ms = percentile(lat["optimizer_gap_ms"], 0.5)  # one step as a user sees it: HF's work between steps too
    md = "\n".join([
        "## Hugging Face Trainer steered by callbacks (`ri.hf`)",
        "",
        f"`python benchmarks/bench_hf.py` on {info['cpus']} CPUs, load {info['loadavg_1m_at_start']} before the run, "
        f"{info['date']}. GPT-2 ({MODEL['n_layer']} layers, {MODEL['n_embd']} wide, {MODEL['block']} tokens x "
        f"{MODEL['batch_size']}) on WikiText-2, `transformers.Trainer`, one torch thread.",
        "",
        f"**Throughput**, {len(r)} pairs of {a.steps}-step runs alternating which goes first (steps/s from the median "
        f"step period, end of one step to the end of the next, steps {WARMUP}..{a.steps}): "
        f"steered / plain = **{statistics.median(r):.3f}** median, range {min(r):.3f}-{max(r):.3f} "
        f"(plain {statistics.median(tp['plain_steps_per_s']):.2f} steps/s, "
        f"steered {statistics.median(tp['steered_steps_per_s']):.2f} steps/s; target >= 0.98). The same runs' "
        f"time inside our callback's hooks: **{statistics.median(tp['callback_us_per_step']):.0f} µs per step** "
        f"(range {min(tp['callback_us_per_step']):.0f}-{max(tp['callback_us_per_step']):.0f}), "
        f"{statistics.median(tp['callback_us_per_step']) / (1e4 / statistics.median(tp['plain_steps_per_s'])):.2f} % "
        "of a step: the ratio's spread is this VM's noise between runs, not the callback.",
        "",
        f"**Command latency**, {len(ms)} `update_optimizer` commands sent at random moments of steps that take "
        f"~{step_ms:.0f} ms inside HF's step hooks and come every ~{period_ms:.0f} ms "
        f"(submitted -> first optimizer step that uses the lr): p50 **{percentile(ms, 0.5):.0f} ms**, "
        f"p99 **{percentile(ms, 0.99):.0f} ms**, max {max(ms):.0f} ms; target p99 <= one step + 20 ms = "
        f"{period_ms + 20:.0f} ms (p50 of the period between optimizer steps + 20). Used by the very next "
        f"optimizer step after the submission: {next_step:.0%} "
        "(lr and optimizer settings are applied in `on_pre_optimizer_step`; a command that reaches the run "
        "within the few ms between its submission and an optimizer step goes to the one after). "
        f"Submission -> in the loop's core: p50 {percentile(lat['reach_ms'], 0.5):.0f} ms, "
        f"p99 {percentile(lat['reach_ms'], 0.99):.0f} ms; from there -> the step that uses it: "
        f"p50 {percentile(lat['wait_ms'], 0.5):.0f} ms, p99 {percentile(lat['wait_ms'], 0.99):.0f} ms (the time "
        f"from one optimizer step to the next: p50 {percentile(lat['optimizer_gap_ms'], 0.5):.0f} ms, "
        f"p99 {percentile(lat['optimizer_gap_ms'], 0.99):.0f} ms).",
        "",
        f"**Start-up**, {len(st['plain_s'])} pairs of a 3-step `train()` (Ray already up, the run's controller "
        f"started and ended each time): plain {min(st['plain_s']):.2f}-{max(st['plain_s']):.2f} s, steered "
        f"**{min(st['steered_s']):.2f}-{max(st['steered_s']):.2f} s**, of which our `on_train_begin` "
        f"{min(st['on_train_begin_s']):.2f}-{max(st['on_train_begin_s']):.2f} s and `on_train_end` "
        f"{min(st['on_train_end_s']):.2f}-{max(st['on_train_end_s']):.2f} s.",
        "",
        f"Leaves out: GPU runs (no GPU was lent); the first {WARMUP} steps of each run (start-up).",
    ])
    save("hf", {"machine": info, "model": MODEL, "throughput": tp, "latency": lat, "startup": st}, md)


if __name__ == "__main__":
    main()
