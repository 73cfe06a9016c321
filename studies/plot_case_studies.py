"""Tables and plots of the case studies from their results JSON (docs/case_study_<n>.json).

    python studies/plot_case_studies.py [--study 1 2]

Writes docs/case_study_<n>.md (the table, with the setup and the machine) and
docs/case_study_<n>.png (validation loss per arm: the mean over seeds with the min-max band,
each intervention marked where it was applied; and each arm's lr over steps, seed by seed).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COLOURS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
TITLES = {1: "Case study 1: a person in the loop", 2: "Case study 2: an LLM in the loop"}


def by_arm(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    order = [a["name"] for a in doc["arms"]]
    arms: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(doc["runs"], key=lambda r: (order.index(r["arm"]) if r["arm"] in order else 99, r["seed"])):
        arms.setdefault(r["arm"], []).append(r)
    return arms


def _finite(xs: list[float | None]) -> list[float]:
    return [x for x in xs if x is not None and math.isfinite(x)]


def table(doc: dict[str, Any]) -> str:
    rows = ["| arm | seeds | final val loss: mean (min-max) | best val loss: mean | interventions per run | s per run |",
            "|---|---:|---:|---:|---:|---:|"]
    stats = {}
    for arm, runs in by_arm(doc).items():
        final = _finite([r["final_eval_loss"] for r in runs])
        best = _finite([r["best_eval_loss"] for r in runs])
        n_int = [len([i for i in r["interventions"] if i["status"] == "applied"]) for r in runs]
        stats[arm] = statistics.mean(final) if final else math.inf
        fin = f"**{statistics.mean(final):.3f}** ({min(final):.3f}-{max(final):.3f})" if final else "n/a"
        if len(final) < len(runs):
            fin += f", {len(runs) - len(final)} not finite"
        rows.append(f"| {runs[0]['label']} | {len(runs)} | {fin} | "
                    f"{statistics.mean(best):.3f} | {statistics.mean(n_int):.1f} | "
                    f"{statistics.median(r['wall_s'] for r in runs):.0f} |" if best else f"| {runs[0]['label']} | n/a |")
    return "\n".join(rows)


def plot(doc: dict[str, Any], path: Path) -> None:
    fig, (ax, axl) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    for i, runs in enumerate(by_arm(doc).values()):
        colour = COLOURS[i % len(COLOURS)]
        steps = runs[0]["eval"]["step"]
        curves = [r["eval"]["loss"] for r in runs if r["eval"]["step"] == steps]
        if not curves:
            continue
        arr = np.array(curves, dtype=float)
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(arr, axis=0)
        ax.plot(steps, mean, color=colour, lw=2, label=f"{runs[0]['label']} (n={len(curves)})")
        ax.fill_between(steps, np.nanmin(arr, axis=0), np.nanmax(arr, axis=0), color=colour, alpha=0.15, lw=0)
        for r in runs:
            marks = [iv["step"] for iv in r["interventions"] if iv["status"] == "applied" and iv["step"] is not None]
            if marks:
                ys = np.interp(marks, steps, mean)
                ax.scatter(marks, ys, marker="v", s=36, color=colour, edgecolor="black", linewidth=0.5, zorder=5)
            axl.plot(r["lr_curve"]["step"], r["lr_curve"]["lr"], color=colour, lw=1.2, alpha=0.8,
                     drawstyle="steps-post", label=runs[0]["label"] if r is runs[0] else None)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (mean over seeds; band: min-max)")
    ax.set_title(f"{TITLES.get(doc['study'], '')} (triangles: interventions applied)", fontsize=11)
    ax.grid(alpha=0.3)
    finals = [v for r in doc["runs"] for v in _finite(r["eval"]["loss"])]
    if finals:
        lo = min(finals)
        ax.set_ylim(lo - 0.1, min(max(finals), lo + 3.0))
    ax.legend(fontsize=8)
    axl.set_yscale("log")
    axl.set_xlabel("step")
    axl.set_ylabel("learning rate (every seed)")
    axl.set_title("learning rate", fontsize=11)
    axl.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(doc: dict[str, Any]) -> str:
    s, m = doc["setup"], doc["machine"]
    return "\n".join([
        f"## {TITLES.get(doc['study'], 'Case study')}",
        "",
        f"GPT-2 from a `GPT2Config` ({s['n_layer']} layers, width {s['n_embd']}, {s['n_head']} heads, context "
        f"{s['context']}, GPT-2's 50257-token vocabulary, 6.8M parameters), trained from scratch on WikiText-2 "
        f"({s['train_tokens']:,} training tokens) for {s['steps']} steps of batch {s['batch_size']}, "
        f"AdamW unless said, grad clip 1.0; validation loss on {s['eval_tokens']:,} held-out tokens every "
        f"{s['eval_every']} steps. Our own loop on a local Ray; {m['cpus']} CPUs, load {m['loadavg_1m_at_start']} "
        f"before the study, {m['date']}, commit {m['commit']}.",
        "",
        table(doc),
        "",
        *sorted({r["note"] for r in doc["runs"] if r.get("note")}),
        "",
        f"![curves](case_study_{doc['study']}.png)",
    ])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--study", type=int, nargs="+", default=[1, 2])
    p.add_argument("--docs", type=Path, default=REPO / "docs")
    args = p.parse_args()
    for n in args.study:
        src = args.docs / f"case_study_{n}.json"
        if not src.exists():
            print(f"{src}: not there (run studies/case_studies.py --study {n} first)")
            continue
        doc = json.loads(src.read_text())
        plot(doc, args.docs / f"case_study_{n}.png")
        (args.docs / f"case_study_{n}.md").write_text(markdown(doc) + "\n")
        print(markdown(doc))


if __name__ == "__main__":
    main()
