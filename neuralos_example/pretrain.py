"""Pretrain the base next-frame model on base users' sessions (generated on the fly).

The shipped base checkpoint was made with exactly the command in its ``.json`` (``meta.command``)
and in the README. ``--device cuda`` runs the same recipe on a GPU (with ``--amp bf16``, the
forward pass in bfloat16); without it, the same command on a CPU reproduces the model, only
slower. Data, initialisation and timestep draws are seeded, so a rerun repeats the run up to
float summation order. Progress, loss, held-out PSNR and closed-loop PSNR are shown as it goes;
a checkpoint is written every ``--save-every`` steps, so an interrupted run leaves a usable model.

Training on its own frames (``--self-rollout P``): in closed loop the model reads the frame it
drew itself, not a true one. For a fraction P of each batch (ramped up from 0 over the first
quarter of the run) the previous frame is replaced by the model's own drawing of it, from the
true frame before and the action between, finished exactly as the demo finishes frames; the
target stays the true next frame. The model so learns to draw the right frame from its own
slightly-off one, and to correct rather than compound its errors (scheduled sampling, one step
deep).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import queue
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import torch
from tqdm import tqdm

from neuralos_example.data import base_session, base_stream, session_arrays
from neuralos_example.evaluation import arrays_psnr, rollout_psnr_by_index
from neuralos_example.model import (
    DEFAULT_STEPS,
    FrameBatch,
    ModelConfig,
    NextFrameModel,
    diffusion_loss,
    finish_frames,
    sample_next,
    save_model,
)


def heldout_arrays(seed: int = 999_000, sessions: int = 8) -> dict[str, np.ndarray]:
    parts = [session_arrays(base_session(seed + i)) for i in range(sessions)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def prefetch(it: Iterator[dict[str, np.ndarray]], depth: int = 8) -> Iterator[dict[str, np.ndarray]]:
    """The batches of ``it``, made on a background thread (one producer: the order is the same)."""
    q: queue.Queue[dict[str, np.ndarray]] = queue.Queue(depth)

    def produce() -> None:
        for b in it:
            q.put(b)

    threading.Thread(target=produce, daemon=True).start()
    while True:
        yield q.get()


def own_context(model: NextFrameModel, arr: dict[str, np.ndarray], rows: np.ndarray, steps: int, dev: torch.device,
                generator: torch.Generator) -> torch.Tensor:
    """The model's own drawing of ``prev`` for ``rows``, from ``prev2`` and the action between."""
    b = FrameBatch.from_arrays(arr["prev2"][rows], arr["prev"][rows], arr["x2"][rows], arr["y2"][rows], arr["event2"][rows],
                               arr["key_index2"][rows], model.config, dev)
    return finish_frames(sample_next(model, b.prev, b.cursor, b.cls, steps, generator), b.prev)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5500)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--ema", type=float, default=0.999, help="EMA decay of the saved weights (0: save the raw weights)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--patch", type=int, default=ModelConfig().patch, help="space-to-depth factor (the UNet runs at size / patch)")
    ap.add_argument("--channels", default=",".join(map(str, ModelConfig().channels)), help="UNet widths per level, e.g. 32,64,128,128")
    ap.add_argument("--layers-per-block", type=int, default=ModelConfig().layers_per_block)
    ap.add_argument("--context-noise", type=float, default=ModelConfig().context_noise)
    ap.add_argument("--changed-weight", type=float, default=ModelConfig().changed_weight)
    ap.add_argument("--self-rollout", type=float, default=0.0, help="fraction of a batch whose previous frame is the model's own (0..1)")
    ap.add_argument("--rollout-steps", type=int, default=2, help="DDIM steps of the model's own frames in training")
    ap.add_argument("--frequent-p", type=float, default=0.005, help="chance that a base user's episode is a frequent task")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", choices=("none", "bf16"), default="none", help="autocast the forward pass (CUDA)")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--save-every", type=int, default=500)
    ap.add_argument("--out", default="neuralos_example/checkpoints/base")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or not args.lr > 0 or not 0 <= args.ema < 1:
        ap.error("--steps and --batch must be >= 1, --lr > 0, 0 <= --ema < 1")
    if not 0 <= args.self_rollout <= 1 or not 0 <= args.frequent_p <= 1 or args.rollout_steps < 1:
        ap.error("--self-rollout and --frequent-p must be in 0..1, --rollout-steps >= 1")
    try:
        args.config = ModelConfig(patch=args.patch, channels=tuple(int(c) for c in args.channels.split(",")),
                                  layers_per_block=args.layers_per_block, context_noise=args.context_noise,
                                  changed_weight=args.changed_weight)
        NextFrameModel(args.config)
    except ValueError as e:
        ap.error(f"model settings: {e}")
    args.argv = argv if argv is not None else sys.argv[1:]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    model = NextFrameModel(args.config).to(dev)
    ema = copy.deepcopy(model).eval() if args.ema else model
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps))
    )
    held = heldout_arrays()
    stream = prefetch(base_stream(args.seed, args.batch, frequent_p=args.frequent_p, history=args.self_rollout > 0))
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    rng = np.random.default_rng(args.seed + 1)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")
    print(f"pretraining {model.num_parameters() / 1e6:.2f}M parameters for {args.steps} steps of {args.batch} on {dev} -> {args.out}", flush=True)
    log: list[dict[str, float]] = []
    start = time.time()
    bar = tqdm(range(1, args.steps + 1), unit="step", file=sys.stdout, mininterval=10, dynamic_ncols=True)
    losses: list[float] = []
    own = 0
    eval_s = 0.0
    for step in bar:
        arr = next(stream)
        batch = FrameBatch.from_arrays(arr["prev"], arr["next"], arr["x"], arr["y"], arr["event"], arr["key_index"], model.config, dev)
        p = args.self_rollout * min(1.0, step / (0.25 * args.steps))
        if p > 0:
            rows = np.flatnonzero(arr["has2"] & (rng.random(args.batch) < p))
            if len(rows):
                with amp:
                    batch.prev[torch.from_numpy(rows).to(dev)] = own_context(model, arr, rows, args.rollout_steps, dev, gen).float()
                own += len(rows)
        with amp:
            loss, _ = diffusion_loss(model, batch, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if args.ema:
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - args.ema)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.5f}", refresh=False)
        if step % args.eval_every == 0 or step == args.steps:
            t_eval = time.time()
            by_index = rollout_psnr_by_index(ema, n_sessions=4, actions=20, steps=DEFAULT_STEPS)
            entry = {"step": step, "loss": float(np.mean(losses[-args.eval_every :])), "psnr_1step": arrays_psnr(ema, held, 1),
                     "closed_loop_psnr": float(np.mean(by_index)), "closed_loop_psnr_last5": float(np.mean(by_index[-5:])),
                     "own_context_rows": own, "minutes": (time.time() - start) / 60}
            log.append(entry)
            bar.write(json.dumps(entry))
            eval_s += time.time() - t_eval
        if step % args.save_every == 0 or step == args.steps:
            meta = {"steps": step, "batch": args.batch, "lr": args.lr, "seed": args.seed, "ema": args.ema, "device": str(dev),
                    "self_rollout": args.self_rollout, "rollout_steps": args.rollout_steps, "frequent_p": args.frequent_p, "amp": args.amp,
                    "command": "python -m neuralos_example.pretrain " + " ".join(args.argv),
                    "minutes": (time.time() - start) / 60, "log": log}
            save_model(ema, args.out, meta)
    bar.close()
    train_s = time.time() - start - eval_s
    print(f"done in {(time.time() - start) / 60:.1f} min ({args.steps / train_s:.2f} training steps/s); saved {args.out}.safetensors", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
