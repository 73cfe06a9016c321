"""The GPU path, checked and measured on a CUDA machine (``make gpu-check``); on a machine
without CUDA it says so and exits 0 (CI never has a GPU).

On the GPU: a small GPT-2 trained by a plain loop, bare and steered with ``ri.steer`` (no
controller: commands are handed to the core as its puller would), alternating rounds;
an lr command lands on the step it should; a checkpoint written on the GPU (with the CUDA
RNG) loads back bit for bit. Prints the figures and writes ``results/gpu_check.json`` and
the RESULTS.md section. Reproduce the CPU side of every figure with
``python benchmarks/bench_step_overhead.py`` and ``python benchmarks/bench_ranks.py``.

    python benchmarks/gpu_check.py [--steps 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import machine, save  # noqa: E402

from ray_interactive.core.commands import CommandRecord, CommandStatus, UpdateOptimizer  # noqa: E402
from ray_interactive.train import loop  # noqa: E402
from ray_interactive.train.ranks import without_controller  # noqa: E402


def model_and_batch(device: torch.device) -> tuple[torch.nn.Module, torch.Tensor]:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=128)).to(device)
    return model, torch.randint(0, 50257, (16, 128), device=device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare(steps: int, device: torch.device) -> float:
    model, x = model_and_batch(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        model(x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return (time.perf_counter() - t0) / steps


def steered(steps: int, device: torch.device, run_dir: Path, lr_at: int | None = None) -> tuple[float, dict[int, float]]:
    model, x = model_and_batch(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    used: dict[int, float] = {}
    with loop.steer("gpu-check", model, opt, open_run=without_controller(), run_dir=run_dir, max_steps=steps, grad_clip=1.0,
                    metrics_interval_s=1.0) as s:
        opt.register_step_pre_hook(lambda o, a, k: used.__setitem__(s.state.step + 1, o.param_groups[0]["lr"]))
        sync(device)
        t0 = time.perf_counter()
        while s.running:
            if lr_at is not None and s.state.step == lr_at:
                s.core.deliver([CommandRecord(command=UpdateOptimizer(params={"lr": 3e-4}), seq=1,
                                              status=CommandStatus.ACCEPTED)])
                lr_at = None
            loss = model(x, labels=x).loss
            loss.backward()
            s.step(loss=loss)
        sync(device)
        dt = (time.perf_counter() - t0) / steps
    return dt, used


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dry-run-on-cpu", action="store_true", help="run the checks on the CPU, write nothing")
    a = ap.parse_args()
    if not torch.cuda.is_available() and not a.dry_run_on_cpu:
        print("gpu-check: no CUDA device on this machine: skipped (nothing measured, nothing written)")
        return
    device = torch.device("cpu" if a.dry_run_on_cpu else "cuda")
    info = {**machine(), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (dry run)"}
    with tempfile.TemporaryDirectory() as tmp:
        bare(20, device)
        rounds = []
        for r in range(a.rounds):
            b = bare(a.steps, device)
            st, _ = steered(a.steps, device, Path(tmp) / f"r{r}")
            rounds.append({"bare_ms": b * 1e3, "steered_ms": st * 1e3})
        _, used = steered(30, device, Path(tmp) / "lr", lr_at=10)
        assert used[11] == 3e-4 and used[10] == 1e-4, used  # the very next optimizer step used it
        model, x = model_and_batch(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        with loop.steer("gpu-ckpt", model, opt, open_run=without_controller(), run_dir=Path(tmp) / "ck", max_steps=5) as s:
            while s.running:
                loss = model(x, labels=x).loss
                loss.backward()
                s.step(loss=loss)
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        final = sorted((Path(tmp) / "ck" / "checkpoints").iterdir())[-1]
        model2, _ = model_and_batch(device)
        opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-4)
        s2 = loop.steer("gpu-ckpt2", model2, opt2, open_run=without_controller(final),
                        run_dir=Path(tmp) / "ck2", max_steps=5)
        with s2:
            pass
        same = all(torch.equal(saved[k], v) for k, v in model2.state_dict().items())
        assert same, "a checkpoint written on the GPU did not load back bit for bit"
    ratio = [r["bare_ms"] / r["steered_ms"] for r in rounds]
    if a.dry_run_on_cpu:
        print(f"gpu-check dry run on the CPU: checks passed; bare/steered {min(ratio):.3f}-{max(ratio):.3f}")
        return
    lines = [
        "## The GPU path (gpu_check)",
        "",
        f"{info['date']}, commit {info['commit']}, {info['gpu']}, load {info['loadavg_1m_at_start']} before the run. "
        f"GPT-2 (4 layers, 256 wide), batch 16 x 128 tokens, AdamW, clipping; {a.rounds} rounds x {a.steps} steps.",
        "",
        "| round | bare ms/step | steered ms/step | bare/steered |",
        "|---|---|---|---|",
        *[f"| {i + 1} | {r['bare_ms']:.2f} | {r['steered_ms']:.2f} | {r['bare_ms'] / r['steered_ms']:.3f} |"
          for i, r in enumerate(rounds)],
        "",
        f"bare/steered {min(ratio):.3f}-{max(ratio):.3f} over rounds (median {statistics.median(ratio):.3f}). An lr "
        "command was used by the very next optimizer step; a checkpoint written on the GPU loaded back bit for bit. "
        "Leaves out: the controller on Ray, many GPUs (NCCL).",
    ]
    save("gpu_check", {"machine": info, "rounds": rounds, "ratio": ratio}, "\n".join(lines))


if __name__ == "__main__":
    main()
