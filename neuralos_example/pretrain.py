"""Pretrain the base next-frame model on base users' sessions (generated on the fly).

The shipped base checkpoint was made with exactly::

    python -m neuralos_example.pretrain --steps 6000 --out neuralos_example/checkpoints/base

(on this project's 2-core CPU machine; ``--device cuda`` gives the same recipe on a GPU). Data,
initialisation and timestep draws are seeded, so a rerun on a CPU repeats the run up to float
summation order. Progress, loss and held-out PSNR are shown as it goes; a checkpoint is written
every ``--save-every`` steps, so an interrupted run leaves a usable model.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from neuralos_example.data import base_session, base_stream, session_arrays
from neuralos_example.evaluation import arrays_psnr
from neuralos_example.model import FrameBatch, ModelConfig, NextFrameModel, diffusion_loss, save_model


def heldout_arrays(seed: int = 999_000, sessions: int = 8) -> dict[str, np.ndarray]:
    parts = [session_arrays(base_session(seed + i)) for i in range(sessions)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights (0: save the raw weights)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--out", default="neuralos_example/checkpoints/base")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or not args.lr > 0 or not 0 <= args.ema < 1:
        ap.error("--steps and --batch must be >= 1, --lr > 0, 0 <= --ema < 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    model = NextFrameModel(ModelConfig()).to(dev)
    ema = copy.deepcopy(model).eval() if args.ema else model
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
    )
    held = heldout_arrays()
    stream = base_stream(args.seed, args.batch)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    print(f"pretraining {model.num_parameters() / 1e6:.2f}M parameters for {args.steps} steps of {args.batch} on {dev} -> {args.out}", flush=True)
    log: list[dict[str, float]] = []
    start = time.time()
    bar = tqdm(range(1, args.steps + 1), unit="step", file=sys.stdout, mininterval=10, dynamic_ncols=True)
    losses: list[float] = []
    for step in bar:
        arr = next(stream)
        batch = FrameBatch.from_arrays(arr["prev"], arr["next"], arr["x"], arr["y"], arr["event"], arr["key_index"], model.config, dev)
        loss, _ = diffusion_loss(model, batch, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if args.ema:
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                    pe.lerp_(pm, 1 - args.ema)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.5f}", refresh=False)
        if step % args.eval_every == 0 or step == args.steps:
            entry = {"step": step, "loss": float(np.mean(losses[-args.eval_every :])), "psnr_1step": arrays_psnr(ema, held, 1), "minutes": (time.time() - start) / 60}
            log.append(entry)
            bar.write(json.dumps(entry))
        if step % args.save_every == 0 or step == args.steps:
            meta = {"steps": step, "batch": args.batch, "lr": args.lr, "seed": args.seed, "ema": args.ema, "device": str(dev),
                    "command": "python -m neuralos_example.pretrain " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "minutes": (time.time() - start) / 60, "log": log}
            save_model(ema, args.out, meta)
    bar.close()
    print(f"done in {(time.time() - start) / 60:.1f} min; saved {args.out}.safetensors", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
