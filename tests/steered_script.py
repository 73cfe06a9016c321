"""A user's training script steered by ray_interactive, run by the tests as its own process
(so that it can be SIGKILLed): ``python -m tests.steered_script loop|hf NAME RUN_DIR
[--resume]``, on the Ray cluster at ``RAY_ADDRESS``. Each step sleeps ``--pace`` seconds
(time to kill it mid-run; the numbers do not change)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import ray_interactive as ri

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def plain_loop(name: str, run_dir: Path, max_steps: int, pace: float, resume: bool) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    w = torch.randn(8, 1, generator=torch.Generator().manual_seed(1))
    with ri.steer(name, model, opt, run_dir=run_dir, max_steps=max_steps, checkpoint_every=10,
                  metrics_interval_s=0.1, resume=resume) as s:
        while s.running:
            x = torch.randn(32, 8)  # the global RNG: a resumed run draws what the dead one would have
            loss = (model(x) - x @ w).pow(2).mean()
            loss.backward()
            s.step(loss=loss)
            time.sleep(pace)


def hf_trainer(name: str, run_dir: Path, max_steps: int, pace: float, resume: bool) -> None:
    from transformers import TrainerCallback

    from ray_interactive.examples.hf_wikitext import build_trainer

    class Pace(TrainerCallback):
        def on_step_end(self, *args: object, **kwargs: object) -> None:
            time.sleep(pace)

    torch.set_num_threads(1)
    trainer = build_trainer(SHARED_DATA, run_dir.parent / f"{name}-out", max_steps=max_steps, n_layer=1, n_embd=32,
                            block=32, batch_size=4, train_chars=50_000, eval_chars=4_000, callbacks=[Pace()])
    ri.hf.steer(trainer, run=name, run_dir=run_dir, checkpoint_every=10, metrics_interval_s=0.1, resume=resume)
    trainer.train()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["loop", "hf"])
    p.add_argument("name")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--pace", type=float, default=0.05)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    (plain_loop if a.kind == "loop" else hf_trainer)(a.name, a.run_dir, a.max_steps, a.pace, a.resume)


if __name__ == "__main__":
    main()
