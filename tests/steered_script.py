"""A user's training script steered by ray_interactive, run by the tests as its own process
(so that it can be SIGKILLed, or started by ``torchrun`` on many ranks):
``python -m tests.steered_script loop|hf NAME RUN_DIR [--resume] [--replay DIR]``, on the
Ray cluster at ``RAY_ADDRESS``. Each step sleeps ``--pace`` seconds (time to kill it
mid-run; the numbers do not change). Under torchrun the plain loop initialises gloo and
wraps its model in DDP, as a user's script would; HF's Trainer does both itself.
``--records DIR``: each rank writes what its optimizer steps used (``rank<r>.jsonl``)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import ray_interactive as ri

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class Records:
    """One line per optimizer step of this rank: the step, branch, lr it used, its loss."""

    def __init__(self, where: Path | None) -> None:
        rank = int(os.environ.get("RANK", "0"))
        self.file = None if where is None else (where / f"rank{rank}.jsonl").open("a", buffering=1)
        if where is not None:  # a test may kill one rank
            (where / f"pid{rank}").write_text(str(os.getpid()))

    def add(self, **row: Any) -> None:
        if self.file is not None:
            self.file.write(json.dumps(row) + "\n")


def die_once(step: int) -> None:
    """``RI_TEST_DIE_AT=<step>:<marker>``: rank 1 SIGKILLs itself at that step, once (the
    marker file remembers), as a worker lost mid-run under a launcher that restarts it."""
    at, _, marker = os.environ.get("RI_TEST_DIE_AT", "").partition(":")
    if at and int(os.environ.get("RANK", "0")) == 1 and step >= int(at) and not Path(marker).exists():
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)


def plain_loop(name: str, run_dir: Path, max_steps: int, pace: float, records: Records, **steer: Any) -> None:
    many = int(os.environ.get("WORLD_SIZE", "1")) > 1
    ours = many and not dist.is_initialized()  # torchrun: the script sets it up; Ray Train has done it
    if ours:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 1))
    trained = torch.nn.parallel.DistributedDataParallel(model) if many else model
    opt = torch.optim.AdamW(trained.parameters(), lr=0.01)
    w = torch.randn(8, 1, generator=torch.Generator().manual_seed(1))
    valid = torch.randn(256, 8, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(int(os.environ.get("RANK", "0")))  # each rank its own data
    used: list[float] = []
    opt.register_step_pre_hook(lambda o, a, k: used.append(o.param_groups[0]["lr"]))  # what a step really uses
    with ri.steer(name, trained, opt, run_dir=run_dir, max_steps=max_steps, metrics_interval_s=0.1,
                  evaluate=lambda m: {"loss": float((m(valid) - valid @ w).pow(2).mean())}, **steer) as s:
        while s.running:
            branch = s.state.branch
            x = torch.randn(32, 8)  # the global RNG: a resumed run draws what the dead one would have
            loss = (trained(x) - x @ w).pow(2).mean()
            loss.backward()
            if s.step(loss=loss):
                records.add(step=s.state.step, branch=branch, lr=used[-1], loss=loss.item())
                die_once(s.state.step)
            time.sleep(pace)
    if ours:
        dist.destroy_process_group()


def hf_trainer(name: str, run_dir: Path, max_steps: int, pace: float, records: Records, **steer: Any) -> None:
    from transformers import TrainerCallback

    from ray_interactive.examples.hf_wikitext import build_trainer

    class Pace(TrainerCallback):
        def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kw: Any) -> None:
            self.lr = optimizer.param_groups[0]["lr"]  # what this step uses (before HF's scheduler steps)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            records.add(step=state.global_step, lr=getattr(self, "lr", None))
            time.sleep(pace)

    torch.set_num_threads(1)
    trainer = build_trainer(SHARED_DATA, run_dir.parent / f"{name}-out", max_steps=max_steps, n_layer=1, n_embd=32,
                            block=32, batch_size=4, train_chars=50_000, eval_chars=4_000, callbacks=[Pace()])
    ri.hf.steer(trainer, run=name, run_dir=run_dir, metrics_interval_s=0.1, **steer)
    trainer.train()


def ray_train_worker(config: dict[str, Any]) -> None:
    """The same script as a Ray Train ``TorchTrainer`` worker function (Ray sets up the group)."""
    fn = plain_loop if config["kind"] == "loop" else hf_trainer
    os.environ.update(config.get("env", {}))
    fn(config["name"], Path(config["run_dir"]), config["max_steps"], 0.0, Records(Path(config["records"])),
       **config["steer"])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["loop", "hf"])
    p.add_argument("name")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--pace", type=float, default=0.05)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--start-paused", action="store_true")
    p.add_argument("--replay", type=Path)
    p.add_argument("--records", type=Path)
    p.add_argument("--checkpoint-every", type=int, default=10, help="0: none")
    p.add_argument("--restart-count", type=int, help="start as torchrun --max-restarts restarts a failed group")
    a = p.parse_args()
    if a.restart_count is not None:
        os.environ["TORCHELASTIC_RESTART_COUNT"] = str(a.restart_count)
    steer: dict[str, Any] = {"resume": a.resume, "checkpoint_every": a.checkpoint_every or None}
    if a.start_paused:
        steer["start_paused"] = True
    if a.replay is not None:
        steer["replay"] = a.replay
    (plain_loop if a.kind == "loop" else hf_trainer)(a.name, a.run_dir, a.max_steps, a.pace, Records(a.records),
                                                     **steer)


if __name__ == "__main__":
    main()
