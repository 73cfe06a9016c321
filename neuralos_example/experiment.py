"""The case study, measured: does finetuning on users' replayed sessions make their tasks work?

    python -m neuralos_example.experiment --steps 800 --sessions 24 --seeds 3

Three models are evaluated on held-out sessions of every task (the frequent ones demo users do,
and the ones they rarely do):

* ``base``: the shipped base model;
* ``base-only``: the base model trained ``--steps`` more steps on base data alone;
* ``finetuned``: the base model trained the same ``--steps`` steps on the deployment mixture:
  half base rows, half live transitions (``fresh`` first, as the trainer draws them) from
  simulated users doing the frequent tasks, replayed in the simulator as the demo's replayer does.

Same optimizer, learning rate, batch size and step count for both arms: the only difference is
the data. Metrics: teacher-forced next-frame PSNR, closed-loop rollout PSNR and closed-loop task
success (see :mod:`neuralos_example.evaluation`). Writes a JSON and Markdown table and a plot.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from neuralos_example.data import (
    FREQUENT_TASKS,
    TASKS,
    Session,
    base_table,
    sessions_table,
    transition_schema,
    user_session,
)
from neuralos_example.evaluation import closed_loop, heldout, rollout, teacher_forced_psnr
from neuralos_example.model import BASE_CHECKPOINT, DEFAULT_STEPS, NextFrameModel, load_model
from neuralos_example.task import NeuralOSTask
from ray_interactive import DataBuffer, DataSource


def split_by_task(live: pa.Table) -> dict[str, pa.Table]:
    """Live rows as one source per frequent task (``live_<task>``) and ``live_other`` for the
    rest (no task going on, or another task); the sources that have rows."""
    tasks = live.column("task").to_pylist()
    out = {}
    for name, keep in [*((f"live_{t}", [x == t for x in tasks]) for t in FREQUENT_TASKS),
                       ("live_other", [x not in FREQUENT_TASKS for x in tasks])]:
        part = live.filter(pa.array(keep))
        if part.num_rows:
            out[name] = part
    return out


#: ``steer(step, model, buffer)``: called between steps to change the buffer's mixture (the model in eval mode)
Steer = Callable[[int, NextFrameModel, DataBuffer], None]


def finetune(model: NextFrameModel, base_rows: pa.Table, live: pa.Table | None, steps: int, batch: int, lr: float, seed: int, label: str,
             warmup: int = 0, by_task: bool = False, steer: Steer | None = None, steer_every: int = 0,
             draw_seed: int | None = None) -> NextFrameModel:
    """``steps`` steps of the task's loss on batches the run's data buffer draws: base rows
    uniformly, and (if given) live rows ingested into a ``fresh`` live source, weights 1:1;
    the lr rises linearly over the first ``warmup`` steps (as the main job's schedule does).

    ``by_task``: the live rows go to one ``fresh`` source per task (:func:`split_by_task`),
    weighted by their rows so that base and live stay 1:1 and each task is drawn as often as
    users did it. ``steer`` is then called every ``steer_every`` steps (not at step 0).
    ``draw_seed``: the buffer's draws from another seed than the model's noise (``seed``)."""
    task = NeuralOSTask(checkpoint=None)
    sources = [DataSource("base", base_rows, allow_nulls=True)]  # "task" is null where no task was going on
    parts = {} if live is None else split_by_task(live) if by_task else {"live": live}
    for name, part in parts.items():
        sources.append(DataSource(name, schema=transition_schema(), policy="fresh", allow_nulls=True,
                                  weight=part.num_rows / sum(p.num_rows for p in parts.values())))
    tmp = tempfile.TemporaryDirectory(prefix="neuralos-exp-")
    buf = DataBuffer(sources, seed=seed if draw_seed is None else draw_seed, directory=Path(tmp.name))
    for name, part in parts.items():
        buf.ingest(part, name)
    model = copy.deepcopy(model).train()
    opt = task.build_optimizer(model, lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    torch.manual_seed(seed)
    for step in tqdm(range(steps), desc=label, unit="step", file=sys.stdout, mininterval=5):
        if steer is not None and steer_every and step and step % steer_every == 0:
            # the steering evaluation samples with its own generator: the training draws stay seeded
            rng = torch.get_rng_state()
            steer(step, model.eval(), buf)
            torch.set_rng_state(rng)
            model.train()
        chunk = buf.next_batches(batch, 1)
        assert chunk is not None
        loss, _ = task.loss(model, task.collate(chunk.table, torch.device("cpu")))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    buf.close()
    tmp.cleanup()
    return model.eval()


def evaluate(model: NextFrameModel, sets: dict[str, list[Session]], steps: int) -> dict[str, dict[str, float]]:
    out = {}
    for task, sessions in sets.items():
        r = closed_loop(model, task, sessions, steps)
        r["teacher_forced_psnr"] = teacher_forced_psnr(model, sessions, steps)
        out[task] = r
    return out


def aggregate(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """Mean, min and max of each metric of each task over replicate runs (one per seed)."""
    out: dict[str, dict[str, Any]] = {}
    for task in runs[0]:
        m: dict[str, Any] = {}
        for key in ("success", "rollout_psnr", "teacher_forced_psnr"):
            vals = [r[task][key] for r in runs]
            m[key], m[f"{key}_min"], m[f"{key}_max"] = float(np.mean(vals)), float(min(vals)), float(max(vals))
        m["per_seed_success"] = [r[task]["success"] for r in runs]
        m["n"] = runs[0][task]["n"]
        out[task] = m
    return out


def table_markdown(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Success as mean (min-max over seeds) where an arm was replicated; PSNR as means."""
    arms = list(results)

    def success(a: str, task: str) -> str:
        m = results[a][task]
        lo, hi = m.get("success_min", m["success"]), m.get("success_max", m["success"])
        return f"{m['success']:.0%}" + ("" if lo == hi else f" ({lo:.0%}-{hi:.0%})")

    lines = ["| task | kind | " + " | ".join(f"{a} success" for a in arms) + " | " + " | ".join(f"{a} PSNR (tf / rollout)" for a in arms) + " |",
             "|---|---|" + "---|" * (2 * len(arms))]
    for task in TASKS:
        kind = "frequent" if task in FREQUENT_TASKS else "rare"
        succ = " | ".join(success(a, task) for a in arms)
        ps = " | ".join(f"{results[a][task]['teacher_forced_psnr']:.1f} / {results[a][task]['rollout_psnr']:.1f}" for a in arms)
        lines.append(f"| {task} | {kind} | {succ} | {ps} |")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, dict[str, Any]]], path: Path, title: str) -> None:
    """Bars are means over seeds; whiskers span the seeds' min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    x = np.arange(len(TASKS))
    w = 0.8 / len(arms)
    for ax, key, label in ((axes[0], "success", "closed-loop task success"), (axes[1], "rollout_psnr", "closed-loop rollout PSNR (dB)")):
        scale = 100 if key == "success" else 1
        for i, a in enumerate(arms):
            m = [results[a][t] for t in TASKS]
            vals = np.array([r[key] for r in m]) * scale
            lo = vals - np.array([r.get(f"{key}_min", r[key]) for r in m]) * scale
            hi = np.array([r.get(f"{key}_max", r[key]) for r in m]) * scale - vals
            ax.bar(x + (i - (len(arms) - 1) / 2) * w, vals, w, label=a, yerr=np.stack([lo, hi]), capsize=2, error_kw={"lw": 0.8})
        ax.set_xticks(x, [f"{t}\n({'frequent' if t in FREQUENT_TASKS else 'rare'})" for t in TASKS], fontsize=8)
        ax.set_title(label, fontsize=10)
        if key == "success":
            ax.set_ylabel("%")
            ax.set_ylim(0, 105)
        else:  # PSNR differences are a few dB: start the axis near the lowest whisker
            low = min(results[a][t].get(f"{key}_min", results[a][t][key]) for a in arms for t in TASKS)
            ax.set_ylim(bottom=max(0.0, np.floor(low) - 2))
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def strips(models: dict[str, NextFrameModel], sets: dict[str, list[Session]], steps: int, path: Path, frames: int = 8) -> None:
    """Per task, one held-out session: the true frames and each model's closed-loop frames, in rows."""
    from PIL import Image, ImageDraw

    blocks = []
    for task in TASKS:
        s = sets[task][0]
        rows = {"true": s.frames()} | {name: rollout(m, s, steps) for name, m in models.items()}
        idx = np.linspace(1, len(s.actions), min(frames, len(s.actions))).round().astype(int)
        pad = np.full((68, 90, 3), 255, np.uint8)
        for name, fr in rows.items():
            row = np.concatenate([pad] + [np.pad(fr[i], ((2, 2), (2, 2), (0, 0)), constant_values=255) for i in idx], axis=1)
            img = Image.fromarray(np.pad(row[:, :], ((2, 2), (0, 0), (0, 0)), constant_values=255))
            ImageDraw.Draw(img).text((2, 26), name, fill=(0, 0, 0))
            blocks.append(np.asarray(img))
        title = Image.fromarray(np.full((14, blocks[-1].shape[1], 3), 255, np.uint8))
        kind = "frequent" if task in FREQUENT_TASKS else "rare"
        ImageDraw.Draw(title).text((2, 1), f"{task} ({kind}): actions {', '.join(map(str, idx))} of a held-out session", fill=(0, 0, 0))
        blocks.insert(len(blocks) - len(rows), np.asarray(title))
    width = max(b.shape[1] for b in blocks)
    img = np.concatenate([np.pad(b, ((0, 0), (0, width - b.shape[1]), (0, 0)), constant_values=255) for b in blocks])
    Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m neuralos_example.experiment", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(BASE_CHECKPOINT))
    ap.add_argument("--steps", type=int, default=600, help="finetuning steps of each arm")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100, help="steps of linear lr warmup (as the main job's)")
    ap.add_argument("--sessions", type=int, default=12, help="held-out sessions per task")
    ap.add_argument("--users", type=int, default=150, help="simulated user sessions of live data")
    ap.add_argument("--base-rows", type=int, default=3000, help="base transitions both finetuning arms draw from")
    ap.add_argument("--sampler-steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--seed", type=int, default=0, help="the first replicate's seed")
    ap.add_argument("--seeds", type=int, default=1,
                    help="replicates: each finetunes both arms again with its own seed, base rows and simulated users")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="docs/neuralos_experiment")
    args = ap.parse_args(argv)
    if min(args.steps, args.batch, args.sessions, args.users, args.seeds, args.base_rows) < 1:
        ap.error("--steps, --batch, --sessions, --users, --seeds and --base-rows must be >= 1")
    if args.users >= 10_000 or args.base_rows > 400_000:
        ap.error("--users must be < 10000 and --base-rows <= 400000 (each seed draws its data from its own seed range)")
    if args.seed < 0 or args.seed + args.seeds > 50:
        ap.error("--seed must be >= 0 and --seed + --seeds <= 50 (higher seeds' data would reach the held-out sessions)")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    base = load_model(args.checkpoint).eval()
    sets = {task: heldout(task, args.sessions) for task in TASKS}
    print(f"held-out: {args.sessions} sessions per task; {args.seeds} replicate(s) of {args.users} simulated user sessions each", flush=True)
    print("evaluating base ...", flush=True)
    base_result = evaluate(base, sets, args.sampler_steps)
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"base-only": [], "finetuned": []}
    ft_seconds, live_rows = [], []
    first: dict[str, NextFrameModel] = {}  # the first seed's models, for the frame strips
    for seed in range(args.seed, args.seed + args.seeds):
        # Each seed its own base rows and users (disjoint seed ranges; held-out sessions are 700000+)
        base_rows = base_table(args.base_rows, 10_000 * seed)
        live = sessions_table([user_session(200_000 + 10_000 * seed + i) for i in range(args.users)])
        live_rows.append(live.num_rows)
        for arm, data in (("base-only", None), ("finetuned", live)):
            t_ft = time.time()
            model = finetune(base, base_rows, data, args.steps, args.batch, args.lr, seed, f"{arm} (seed {seed})", args.warmup)
            if seed == args.seed:
                first[arm] = model
            ft_seconds.append(time.time() - t_ft)
            print(f"evaluating {arm} (seed {seed}) ...", flush=True)
            runs[arm].append(evaluate(model, sets, args.sampler_steps))
    results = {"base": aggregate([base_result]), **{arm: aggregate(r) for arm, r in runs.items()}}
    ft_minutes = float(np.median(ft_seconds)) / 60
    md = table_markdown(results)
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"args": vars(args), "finetune_minutes_per_arm": ft_minutes, "live_rows": live_rows, "total_minutes": (time.time() - t0) / 60,
            "command": "python -m neuralos_example.experiment " + " ".join(argv if argv is not None else sys.argv[1:])}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results, "runs": runs}, indent=1) + "\n")
    out.with_suffix(".md").write_text(md + "\n")
    reps = f", mean of {args.seeds} seeds (whiskers: min-max)" if args.seeds > 1 else ""
    plot(results, out.with_suffix(".png"), f"{args.steps} finetuning steps per arm ({ft_minutes:.1f} CPU-min), {args.sessions} held-out sessions per task, {args.sampler_steps}-step DDIM{reps}")
    strips({"base": base, "finetuned": first["finetuned"]}, sets, args.sampler_steps, out.parent / f"{out.name}_frames.png")
    print(f"wrote {out}.json, .md, .png, _frames.png in {(time.time() - t0) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
