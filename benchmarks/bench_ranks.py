"""What steering costs a loop on many ranks: a plain DDP loop on 2 gloo ranks (2 processes
on this machine, no Ray) bare, and the same loop steered with ``ri.steer`` - nothing due,
and a command delivered every 5th step - plus the exchange alone (the one collective a
steered step adds: an ``all_reduce`` of 4 doubles, and a broadcast of the commands' bytes
when rank 0 has some). In a step the exchange is pipelined (started at one step's control
point, finished at the next): the "exchange alone" figure is its latency when waited for
at once, which a step hides behind its forward and backward.

Rank 0 runs without a controller (its commands are handed to its core as its puller
would): what is measured is what every rank pays per step, not the controller's side
(bench_command_latency measures that). Rounds alternate bare / steered; medians per pass,
the range over passes in the headline.

    python benchmarks/bench_ranks.py [--passes 3] [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from _common import machine, save  # noqa: E402

from ray_interactive.core.commands import CommandRecord, CommandStatus, UpdateOptimizer  # noqa: E402
from ray_interactive.train import loop  # noqa: E402
from ray_interactive.train.ranks import without_controller  # noqa: E402

WORLD = 2
DUE_EVERY = 5


def model_and_data() -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.GELU(), torch.nn.Linear(256, 128))
    return model, torch.randn(32, 128)


def bare(steps: int) -> list[float]:
    model, x = model_and_data()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = ddp(x).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)  # what the steered loop does too (grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times


def steered(steps: int, run_dir: Path, due_every: int | None) -> tuple[list[float], list[float]]:
    """Step times: steps with nothing due, steps at which a command arrived."""
    model, x = model_and_data()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    quiet, due, seq, arriving = [], [], 0, False
    with loop.steer("bench-ranks", ddp, opt, open_run=without_controller(), run_dir=run_dir, max_steps=steps, grad_clip=1.0,
                    metrics_interval_s=1.0) as s:
        while s.running:
            t0 = time.perf_counter()
            sending = due_every is not None and s.state.step % due_every == 0 and s.state.step > 0
            if sending and dist.get_rank() == 0:
                seq += 1
                s.core.deliver([CommandRecord(command=UpdateOptimizer(params={"lr": 1e-3 + seq * 1e-7}), seq=seq,
                                              status=CommandStatus.ACCEPTED)])
            loss = ddp(x).pow(2).mean()
            loss.backward()
            s.step(loss=loss)
            # the step after the delivery: the exchange it started finishes with a broadcast, and every rank applies it
            (due if arriving else quiet).append(time.perf_counter() - t0)
            arriving = sending
    return quiet, due


def exchange_us(core: Any, n: int) -> dict[str, float]:
    ranks = core.ranks
    record = [CommandRecord(command=UpdateOptimizer(params={"lr": 1e-3}), seq=1, status=CommandStatus.ACCEPTED)]
    out = {}
    for what, records in (("empty", []), ("one_command", record)):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            ranks.exchange(records if ranks.rank == 0 else [], 0, 1.0)
            times.append(time.perf_counter() - t0)
        out[what] = statistics.median(times) * 1e6
    return out


def worker(rank: int, port: int, passes: int, steps: int, results: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bare(30)  # warm up
        for p in range(passes):
            b = bare(steps)
            quiet, _ = steered(steps, Path(tmp) / f"quiet{p}", None)
            quiet2, due = steered(steps, Path(tmp) / f"due{p}", DUE_EVERY)
            rows.append({"bare_ms": statistics.median(b) * 1e3, "steered_ms": statistics.median(quiet) * 1e3,
                         "steered_quiet_ms": statistics.median(quiet2) * 1e3,
                         "command_due_ms": statistics.median(due) * 1e3})
        # the exchange alone, on a core that is attached to the ranks
        model, _ = model_and_data()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        with loop.steer("bench-x", ddp, torch.optim.SGD(ddp.parameters(), lr=0.1), open_run=without_controller(),
                        run_dir=Path(tmp) / "x", max_steps=1) as s:
            ex = exchange_us(s.core, 500)
            ddp(torch.randn(4, 128)).sum().backward()
            s.step()
    if rank == 0:
        results.put({"passes": rows, "exchange_us": ex})
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    a = ap.parse_args()
    info = machine()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    mp.start_processes(worker, args=(port, a.passes, a.steps, results), nprocs=WORLD, join=True, start_method="spawn")
    got = results.get()
    rows, ex = got["passes"], got["exchange_us"]
    added = [(r["steered_ms"] - r["bare_ms"]) * 1e3 for r in rows]
    ratio = [r["bare_ms"] / r["steered_ms"] for r in rows]
    due_added = [(r["command_due_ms"] - r["steered_quiet_ms"]) * 1e3 for r in rows]

    def rng(xs: list[float], fmt: str = "{:.0f}") -> str:
        return f"{fmt.format(min(xs))}-{fmt.format(max(xs))}"

    lines = [
        "## Many ranks: what steering adds to a step (bench_ranks)",
        "",
        f"{info['date']}, commit {info['commit']}, {info['cpus']} CPUs, load {info['loadavg_1m_at_start']} before "
        f"the run, torch {info['torch']}. A plain DDP loop (MLP 128-256-128, batch 32, AdamW, clipping) on "
        f"{WORLD} gloo ranks in 2 processes, no Ray; {a.passes} passes x {a.steps} steps, medians per pass.",
        "",
        "| pass | bare ms/step | steered, nothing due | added us/step | bare/steered | steered, a command due "
        f"every {DUE_EVERY}th step: quiet steps / command steps |",
        "|---|---|---|---|---|---|",
        *[f"| {i + 1} | {r['bare_ms']:.3f} | {r['steered_ms']:.3f} | {(r['steered_ms'] - r['bare_ms']) * 1e3:.0f} | "
          f"{r['bare_ms'] / r['steered_ms']:.3f} | {r['steered_quiet_ms']:.3f} / {r['command_due_ms']:.3f} |"
          for i, r in enumerate(rows)],
        "",
        f"Headline: nothing due, steering adds {rng(added)} us a step (bare/steered {rng(ratio, '{:.3f}')}); a step "
        f"at which a command arrives costs {rng(due_added)} us more than a quiet one (its broadcast, unpickling and "
        f"applying it on every rank). The exchange alone, waited for at once (median of 500): {ex['empty']:.0f} us "
        f"with nothing to hand over, {ex['one_command']:.0f} us with one command; in a step it is pipelined "
        "behind the next forward and backward (a command reaches the ranks one step after rank 0 had it).",
        "",
        "What it leaves out: the controller (rank 0's puller runs on its own thread); a GPU and NCCL (beside NCCL the "
        "exchange runs on a gloo group of its own on the CPU, not measured here); "
        "more than 2 ranks (an all_reduce of 4 doubles grows with log2 of the ranks in gloo's algorithms). On this "
        "2-core machine the 2 ranks share the cores with each other, so a collective's latency includes "
        "scheduling.",
    ]
    save("ranks", {"machine": info, "passes": rows, "exchange_us": ex, "added_us": added, "ratio": ratio,
                   "command_added_us": due_added}, "\n".join(lines))


if __name__ == "__main__":
    main()
