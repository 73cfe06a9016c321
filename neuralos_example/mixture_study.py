"""Issue 25's open question 3, measured: does a mixture steered by per-task evaluations beat
the users' own mixture at equal steps?

    python -m neuralos_example.mixture_study --steps 800 --seeds 3

Every arm finetunes the shipped base model on the deployment mixture of
:mod:`neuralos_example.experiment` (half base rows, half live transitions of simulated users),
with the live rows as one source per frequent task (``live_create_folder``,
``live_open_browser``; ``live_other`` for rows between tasks):

* ``fixed``: each task drawn as often as the users did it, all run long;
* ``reshuffled``: the fixed mixture with the buffer's draws from another seed (the model's
  noise as in ``fixed``): how much the success moves when only the order of the draws does,
  which is all a mixture change does to a run besides the mixture itself;
* ``steered``: every ``--steer-every`` steps the mixture agent's own policy
  (``ri.MixturePolicy``, higher-is-better, defaults) reads
  each frequent task's closed-loop success on *validation* sessions (their own seeds, never
  the test sessions) and moves the task sources' weights toward the task that lags, within
  its bounds; base and ``live_other`` keep their weights.

Same seed, base rows, users, lr and steps; fixed and steered draw the same rows until the
first shift. Every arm is then judged on the held-out test sessions of every task (the experiment's).
Writes ``docs/neuralos_mixture.{json,md,png}``; ``--arms A ... --merge`` runs only those arms
and keeps the others' results from that file (same settings).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import ray_interactive as ri
from neuralos_example.data import FREQUENT_TASKS, TASKS, Session, base_table, sessions_table, user_session
from neuralos_example.evaluation import closed_loop, heldout
from neuralos_example.experiment import aggregate, evaluate, finetune
from neuralos_example.model import BASE_CHECKPOINT, DEFAULT_STEPS, NextFrameModel, load_model
from ray_interactive import DataBuffer

#: validation sessions' seeds: disjoint from the test sessions (700000+), users and base rows
VALIDATION_SEED = 760_000
ARMS = ("fixed", "reshuffled", "steered")
RESHUFFLE = 1_000  # the reshuffled arm's draw seed: the run's seed + this


class TaskMixtureSteer:
    """The mixture agent's policy on a plain loop's buffer: at each call, the frequent tasks'
    success on the validation sessions as ``eval/<task>/success``, the policy's decision
    applied to the buffer, and a log of both."""

    def __init__(self, validation: dict[str, list[Session]], sampler_steps: int) -> None:
        self.validation, self.sampler_steps = validation, sampler_steps
        self.policy = ri.MixturePolicy({f"live_{t}": f"eval/{t}/success" for t in validation}, higher_is_better=True)
        self.log: list[dict[str, Any]] = []

    def __call__(self, step: int, model: NextFrameModel, buf: DataBuffer) -> None:
        evals = {f"eval/{t}/success": closed_loop(model, t, s, self.sampler_steps)["success"]
                 for t, s in self.validation.items()}
        obs = ri.Observation(step=step, status="running", branch="main", lr=None, loss=[], loss_steps=[],
                             eval_loss=[], paused_by=None, checkpoints=[], own_actions=[], evals=evals,
                             mixture=buf.mixture())
        before = buf.mixture()
        decision = self.policy.decide(obs)
        for cmd in decision.commands:
            buf.set_mixture(cmd["weights"])
        self.log.append({"step": step, "evals": evals, "mixture_before": before, "mixture": buf.mixture(),
                         "why": decision.rationale})


def task_shares(mixture: dict[str, float]) -> dict[str, float]:
    """Each frequent task's share of the tracked (per-task) live weight."""
    tracked = {t: mixture.get(f"live_{t}", 0.0) for t in FREQUENT_TASKS}
    total = sum(tracked.values()) or 1.0
    return {t: w / total for t, w in tracked.items()}


def table_markdown(results: dict[str, dict[str, dict[str, Any]]], paired: dict[str, dict[str, list[float]]]) -> str:
    lines = ["| task | kind | " + " | ".join(f"{a} success: mean (min-max)" for a in results)
             + "".join(f" | {a} - fixed, per seed" for a in paired) + " |",
             "|---|---|" + "---:|" * (len(results) + len(paired))]
    for task in TASKS:
        kind = "frequent" if task in FREQUENT_TASKS else "rare"
        cells = []
        for a in results:
            m = results[a][task]
            lo, hi = m.get("success_min", m["success"]), m.get("success_max", m["success"])
            cells.append(f"{m['success']:.0%}" + ("" if lo == hi else f" ({lo:.0%}-{hi:.0%})"))
        diffs = "".join(" | " + ", ".join(f"{d:+.0%}" for d in per[task]) for per in paired.values())
        lines.append(f"| {task} | {kind} | {' | '.join(cells)}{diffs} |")
    return "\n".join(lines)


def plot(results: dict[str, dict[str, dict[str, Any]]], logs: list[list[dict[str, Any]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, axs) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(TASKS))
    w = 0.8 / len(results)
    for i, (a, res) in enumerate(results.items()):
        vals = np.array([res[t]["success"] for t in TASKS]) * 100
        lo = vals - np.array([res[t].get("success_min", res[t]["success"]) for t in TASKS]) * 100
        hi = np.array([res[t].get("success_max", res[t]["success"]) for t in TASKS]) * 100 - vals
        ax.bar(x + (i - (len(results) - 1) / 2) * w, vals, w, label=a, yerr=np.stack([lo, hi]), capsize=2,
               error_kw={"lw": 0.8})
    ax.set_xticks(x, [f"{t}\n({'frequent' if t in FREQUENT_TASKS else 'rare'})" for t in TASKS], fontsize=8)
    ax.set_ylabel("closed-loop success on held-out test sessions (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title("success per task (mean over seeds; whiskers min-max)", fontsize=10)
    colours = plt.get_cmap("tab10").colors
    for s, log in enumerate(logs):
        steps = [0] + [e["step"] for e in log]
        first = task_shares(log[0]["mixture_before"]) if log else {}
        for j, t in enumerate(FREQUENT_TASKS):
            shares = [first.get(t, 0.0)] + [task_shares(e["mixture"])[t] for e in log]
            axs.plot(steps, shares, drawstyle="steps-post", color=colours[j], alpha=0.8, lw=1.4,
                     label=f"{t} (share of the task sources)" if s == 0 else None)
            axs.scatter([e["step"] for e in log], [e["evals"][f"eval/{t}/success"] for e in log], color=colours[j],
                        marker="x", s=18, alpha=0.7, label=f"{t}: validation success" if s == 0 else None)
    axs.set_xlabel("step")
    axs.set_ylim(-0.02, 1.02)
    axs.set_title("steered: task shares (lines), validation success (x); all seeds", fontsize=9)
    axs.legend(fontsize=7)
    axs.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m neuralos_example.mixture_study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(BASE_CHECKPOINT))
    ap.add_argument("--steps", type=int, default=800, help="finetuning steps of each arm")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--sessions", type=int, default=24, help="held-out test sessions per task")
    ap.add_argument("--val-sessions", type=int, default=8, help="validation sessions per frequent task (the agent's)")
    ap.add_argument("--steer-every", type=int, default=100, help="steps between the agent's looks")
    ap.add_argument("--users", type=int, default=150)
    ap.add_argument("--base-rows", type=int, default=3000)
    ap.add_argument("--sampler-steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="docs/neuralos_mixture")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    ap.add_argument("--merge", action="store_true", help="keep the other arms' results from --out's JSON")
    args = ap.parse_args(argv)
    if min(args.steps, args.batch, args.sessions, args.val_sessions, args.steer_every, args.users, args.seeds,
           args.base_rows) < 1:
        ap.error("--steps, --batch, --sessions, --val-sessions, --steer-every, --users, --seeds and --base-rows must be >= 1")
    if args.steer_every >= args.steps:
        ap.error(f"--steer-every ({args.steer_every}) must be below --steps ({args.steps}): the agent would never look")
    if args.seed < 0 or args.seed + args.seeds > 50 or args.users >= 10_000 or args.base_rows > 400_000:
        ap.error("--seed + --seeds <= 50, --users < 10000, --base-rows <= 400000 (the data's seed ranges stay disjoint)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t0 = time.time()
    machine = _machine()  # the load before the study
    base = load_model(args.checkpoint).eval()
    test = {task: heldout(task, args.sessions) for task in TASKS}
    validation = {task: heldout(task, args.val_sessions, seed=VALIDATION_SEED) for task in FREQUENT_TASKS}
    out = Path(args.out)
    kept = _kept(out, args) if args.merge else {}
    runs: dict[str, list[dict[str, dict[str, float]]]] = {a: [] for a in args.arms}
    logs: list[list[dict[str, Any]]] = []
    seconds: dict[str, list[float]] = {a: [] for a in args.arms}
    for seed in range(args.seed, args.seed + args.seeds):
        base_rows = base_table(args.base_rows, 10_000 * seed)  # the experiment's data for this seed
        live = sessions_table([user_session(200_000 + 10_000 * seed + i) for i in range(args.users)])
        for arm in args.arms:
            steer = TaskMixtureSteer(validation, args.sampler_steps) if arm == "steered" else None
            t_ft = time.time()
            model = finetune(base, base_rows, live, args.steps, args.batch, args.lr, seed, f"{arm} (seed {seed})",
                             args.warmup, by_task=True, steer=steer, steer_every=args.steer_every,
                             draw_seed=seed + RESHUFFLE if arm == "reshuffled" else None)
            seconds[arm].append(time.time() - t_ft)
            print(f"evaluating {arm} (seed {seed}) on the test sessions ...", flush=True)
            runs[arm].append(evaluate(model, test, args.sampler_steps))
            if steer is not None:
                logs.append(steer.log)
    if "steered" not in args.arms and kept.get("steering"):
        logs = kept["steering"]
    runs = {a: runs[a] if a in args.arms else kept["runs"][a] for a in ARMS if a in args.arms or a in kept.get("runs", {})}
    results = {a: aggregate(r) for a, r in runs.items()}
    paired = {a: {t: [x[t]["success"] - f[t]["success"] for f, x in zip(runs["fixed"], runs[a], strict=True)]
                  for t in TASKS} for a in runs if a != "fixed" and "fixed" in runs}
    md = table_markdown(results, paired)
    print(md)
    meta = {"args": vars(args), "machine": machine,
            "finetune_minutes": {a: statistics.median(v) / 60 for a, v in seconds.items()},
            "merged_from": kept.get("meta") if kept else None,
            "total_minutes": (time.time() - t0) / 60,
            "command": "python -m neuralos_example.mixture_study " + " ".join(argv if argv is not None else sys.argv[1:])}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results, "runs": runs, "paired": paired,
                                                    "steering": logs}, indent=1) + "\n")
    out.with_suffix(".md").write_text(
        f"Measured {machine['date']} on commit {machine['commit']}; load average {machine['loadavg_1m_at_start']} "
        f"(1 min) on {machine['cpus']} CPUs before the study; {meta['total_minutes']:.0f} minutes in all. "
        f"`{meta['command']}`: {args.steps} steps per arm, {args.seeds} seed(s), {args.sessions} held-out test "
        f"sessions per task; the agent looked every {args.steer_every} steps at {args.val_sessions} validation "
        f"sessions per frequent task.{_merged(kept)}\n\n{md}\n")
    plot(results, logs, out.with_suffix(".png"),
         f"{args.steps} steps per arm, {args.seeds} seed(s), {args.sessions} test sessions per task; "
         f"the agent looks every {args.steer_every} steps at {args.val_sessions} validation sessions per task")
    print(f"wrote {out}.json, .md, .png in {(time.time() - t0) / 60:.1f} min", flush=True)
    return 0


def _kept(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The earlier study in ``out``'s JSON whose arms this run does not re-run; refused if it
    was run with other settings (its numbers would not compare)."""
    path = out.with_suffix(".json")
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    same = ("steps", "batch", "lr", "warmup", "sessions", "val_sessions", "steer_every", "users", "base_rows",
            "sampler_steps", "seed", "seeds", "checkpoint")
    theirs = doc["meta"]["args"]
    differ = [k for k in same if theirs.get(k) != getattr(args, k)]
    if differ:
        raise SystemExit(f"--merge: {path} was run with other settings ({', '.join(differ)}); re-run every arm")
    doc["runs"] = {a: r for a, r in doc["runs"].items() if a not in args.arms}
    return doc


def _merged(kept: dict[str, Any]) -> str:
    if not kept.get("runs"):
        return ""
    m = kept["meta"].get("machine") or {}
    return (f" Kept from the run of {m.get('date')} on commit {m.get('commit')} (load {m.get('loadavg_1m_at_start')}): "
            f"{', '.join(kept['runs'])}.")


def _machine() -> dict[str, Any]:
    """Date, commit, CPUs and the load now (what benchmarks/_common.py records)."""
    import os
    import subprocess

    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent, capture_output=True,
                            text=True, timeout=10).stdout.strip() or "unknown"
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit, "cpus": os.cpu_count(),
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}


if __name__ == "__main__":
    raise SystemExit(main())
