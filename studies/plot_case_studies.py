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
# 20 distinct colours (one per arm); arms nobody steers are drawn dashed
COLOURS = [matplotlib.colors.to_hex(c) for c in plt.get_cmap("tab20").colors[::2] + plt.get_cmap("tab20").colors[1::2]]
#: Case study 1's static grid (the too-high lr among them): the reference and the equal-cost grid.
GRID = ["static_high", "static_5e-3", "static_1e-3", "static_3e-4"]
TITLES = {1: "Case study 1: from a too-high lr, at equal compute", 2: "Case study 2: an LLM in the loop"}


def by_arm(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    order = [a["name"] for a in doc["arms"]]
    arms: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(doc["runs"], key=lambda r: (order.index(r["arm"]) if r["arm"] in order else 99, r["seed"])):
        arms.setdefault(r["arm"], []).append(r)
    return arms


def _finite(xs: list[float | None]) -> list[float]:
    return [x for x in xs if x is not None and math.isfinite(x)]


def one_run(r: dict[str, Any], steps: int) -> float:
    """The arm's whole cost in runs of ``steps`` optimizer steps (exploration included)."""
    return float(r.get("compute_steps") or r.get("steps") or steps) / steps


def equal_cost_grid(doc: dict[str, Any], probe: int) -> list[dict[str, Any]]:
    """The grid a user could afford with the agents' budget: each grid lr trained ``probe``
    steps, the best by validation loss then trained the full run. The first ``probe`` steps
    of a constant-lr run are the probe itself (same seed, same batches), so each seed's
    result is read off the grid's own runs: the chosen lr's full run, at the cost of
    ``len(GRID) x probe`` steps more."""
    arms = by_arm(doc)
    out = []
    for seed in sorted({r["seed"] for r in arms.get(GRID[0], [])}):
        runs = [next((r for r in arms.get(a, []) if r["seed"] == seed), None) for a in GRID]
        if any(r is None for r in runs):
            continue
        at_probe = [dict(zip(r["eval"]["step"], r["eval"]["loss"])).get(probe, math.inf) for r in runs]  # type: ignore[index]
        chosen = runs[int(np.nanargmin(np.nan_to_num(at_probe, nan=math.inf)))]
        assert chosen is not None
        out.append({**chosen, "arm": "grid_equal", "compute_steps": chosen["steps"] + len(GRID) * probe,
                    "label": f"best of the {len(GRID)} grid lrs after {probe} steps each, then run",
                    "chose": chosen["arm"]})
    return out


def table(doc: dict[str, Any]) -> str:
    rows = ["| arm | seeds | final val loss: mean (min-max) | best val loss: mean | optimizer steps (x one run) "
            "| commands from the UI or an agent, per run | s per run |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    stats = {}
    steps = doc["setup"]["steps"]
    for arm, runs in by_arm(doc).items():
        final = _finite([r["final_eval_loss"] for r in runs])
        best = _finite([r["best_eval_loss"] for r in runs])
        n_int = [len([i for i in r["interventions"] if i["status"] == "applied"]) for r in runs]
        stats[arm] = statistics.mean(final) if final else math.inf
        fin = f"**{statistics.mean(final):.3f}** ({min(final):.3f}-{max(final):.3f})" if final else "n/a"
        if len(final) < len(runs):
            fin += f", {len(runs) - len(final)} not finite"
        cost = [one_run(r, steps) for r in runs]
        rows.append(f"| {runs[0]['label']} | {len(runs)} | {fin} | "
                    f"{statistics.mean(best):.3f} | {min(cost):.2f}-{max(cost):.2f} | {statistics.mean(n_int):.1f} | "
                    f"{statistics.median(r['wall_s'] for r in runs):.0f} |" if best else f"| {runs[0]['label']} | n/a |")
    return "\n".join(rows)


def paired(doc: dict[str, Any], arm: str) -> list[str]:
    """``arm`` against every other arm, seed by seed (the seeds both have)."""
    arms = by_arm(doc)
    mine = {r["seed"]: r["final_eval_loss"] for r in arms.get(arm, [])}
    lines = []
    for other, runs in arms.items():
        if other == arm:
            continue
        pairs = [(mine[r["seed"]], r["final_eval_loss"]) for r in runs if r["seed"] in mine]
        pairs = [(a, b) for a, b in pairs if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
        if not pairs:
            continue
        diffs = [a - b for a, b in pairs]
        wins = sum(d < 0 for d in diffs)
        lines.append(f"| {runs[0]['label']} | {len(pairs)} | {wins}/{len(pairs)} | {statistics.mean(diffs):+.3f} | "
                     f"{min(diffs):+.3f} to {max(diffs):+.3f} |")
    if not lines:
        return []
    label = arms[arm][0]["label"]
    return [f"Paired per seed: **{label}** minus each arm's final validation loss (negative: {label} is better).",
            "", "| against | seeds | better on | mean difference | range |", "|---|---:|---:|---:|---:|", *lines]


def target(doc: dict[str, Any], arm: str = "lookahead") -> list[str]:
    """Issue 25's target from the too-high lr: within 2 % of the best grid lr's validation loss
    at no more than 1.5x one run's compute, and better than static and the rule agent on every seed."""
    arms = by_arm(doc)
    if arm not in arms:
        return []
    grid = {a: _finite([r["final_eval_loss"] for r in arms[a]]) for a in GRID[1:] if a in arms}
    ref_arm = min(grid, key=lambda a: statistics.mean(grid[a]) if grid[a] else math.inf)
    ref = statistics.mean(grid[ref_arm])
    mine = _finite([r["final_eval_loss"] for r in arms[arm]])
    gap = statistics.mean(mine) / ref - 1
    cost = max(one_run(r, doc["setup"]["steps"]) for r in arms[arm])
    by_seed = {r["seed"]: r["final_eval_loss"] for r in arms[arm]}
    beats = {}
    for other in ("static_high", "rule_high"):
        pairs = [(by_seed.get(r["seed"]), r["final_eval_loss"]) for r in arms.get(other, []) if r["seed"] in by_seed]
        beats[other] = (sum(a is not None and b is not None and a < b for a, b in pairs), len(pairs))
    ok = gap <= 0.02 and cost <= 1.5 and all(w == n and n > 0 for w, n in beats.values())
    return [f"**Target** (from the too-high lr: within 2 % of the best grid lr at <= 1.5x one run, better than "
            f"static and the rule agent on every seed): **{'met' if ok else 'not met'}**. The {arms[arm][0]['label']} "
            f"ends at {statistics.mean(mine):.3f}, {gap:+.1%} from the best grid lr ({ref_arm.removeprefix('static_')}: "
            f"{ref:.3f}, whose grid cost {len(GRID)} runs), at up to {cost:.2f}x one run; better than static on "
            f"{beats['static_high'][0]}/{beats['static_high'][1]} seeds and than the rule agent on "
            f"{beats['rule_high'][0]}/{beats['rule_high'][1]}."]


def plot(doc: dict[str, Any], path: Path) -> None:
    fig, (ax, axl) = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [3, 2]})
    for i, runs in enumerate(by_arm(doc).values()):
        colour = COLOURS[i % len(COLOURS)]
        every = doc["setup"]["eval_every"]
        steps = [x for x in runs[0]["eval"]["step"] if x % every == 0]
        curves = []
        for r in runs:  # the regular evaluations (a lookahead's candidates add their own in between)
            at = dict(zip(r["eval"]["step"], r["eval"]["loss"]))
            if all(x in at for x in steps):
                curves.append([at[x] if at[x] is not None else math.nan for x in steps])
        if not curves:
            continue
        arr = np.array(curves, dtype=float)
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(arr, axis=0)
        steered = bool(runs[0].get("steerer"))
        ax.plot(steps, mean, color=colour, lw=2, ls="-" if steered else "--",
                label=f"{runs[0]['label']} (n={len(curves)})")
        ax.fill_between(steps, np.nanmin(arr, axis=0), np.nanmax(arr, axis=0), color=colour, alpha=0.12, lw=0)
        for r in runs:
            marks = _lr_moves(r) if steered else []
            if marks:
                ys = np.interp(marks, steps, mean)
                ax.scatter(marks, ys, marker="v", s=36, color=colour, edgecolor="black", linewidth=0.5, zorder=5)
            axl.plot(r["lr_curve"]["step"], r["lr_curve"]["lr"], color=colour, lw=1.2, alpha=0.8,
                     drawstyle="steps-post", label=runs[0]["label"] if r is runs[0] else None)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (mean over seeds; band: min-max)")
    ax.set_title(f"{TITLES.get(doc['study'], '')} (triangles: lr changes that stuck)", fontsize=11)
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


def _lr_moves(r: dict[str, Any]) -> list[int]:
    """The steps where the run's own line changed its lr: the interventions that stuck (a
    lookahead's candidates on the branches it left are not on it)."""
    lr, steps = r["lr_curve"]["lr"], r["lr_curve"]["step"]
    return [s for s, a, b in zip(steps[1:], lr, lr[1:]) if a != b]


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
        f"before the study, {m['date']}, commit {m['commit']}.{_later(doc)}",
        "",
        table(doc),
        "",
        *([f"Equal-cost grid: {_chosen(doc)}", ""] if doc["study"] == 1 else []),
        *(["A lookahead agent's commands are its own mechanics: for each decision and candidate a load, the "
           "move, a pinned pause, a resume, an evaluation and a save.", ""] if _lookaheads(doc) else []),
        *[line for arm in _lookaheads(doc) for line in (*(target(doc, arm) if doc["study"] == 1 else []), "",
                                                         *paired(doc, arm), "")],
        *sorted({r["note"] for r in doc["runs"] if r.get("note")}),
        "",
        f"![curves](case_study_{doc['study']}.png)",
    ])


def _later(doc: dict[str, Any]) -> str:
    """The invocations after the first (arms added later), with their date, commit and load."""
    first = doc["machine"].get("date")
    later = sorted({(r["machine"]["date"], r["machine"]["commit"], r["machine"]["loadavg_1m_at_start"])
                    for r in doc["runs"] if r.get("machine") and r["machine"].get("date") != first})
    return (" Arms added later: " + "; ".join(f"{d}, commit {c}, load {ld}" for d, c, ld in later) + ".") if later else ""


def _lookaheads(doc: dict[str, Any]) -> list[str]:
    """The arms a lookahead agent steered alone (the target and the paired tables are theirs)."""
    return [a["name"] for a in doc["arms"] if a.get("steerer") == "lookahead" and any(
        r["arm"] == a["name"] for r in doc["runs"])]


def _chosen(doc: dict[str, Any]) -> str:
    picks = [f"seed {r['seed']}: {r['chose'].removeprefix('static_')}" for r in doc["runs"] if r["arm"] == "grid_equal"]
    return "the lr each seed's probe chose - " + ", ".join(picks) if picks else "no seed has the whole grid"


def with_derived(doc: dict[str, Any]) -> dict[str, Any]:
    """The results with the arms computed from others (the equal-cost grid of study 1)."""
    if doc["study"] != 1:
        return doc
    derived = equal_cost_grid(doc, probe=doc["setup"]["eval_every"])
    arms = [*doc["arms"], {"name": "grid_equal", "label": derived[0]["label"]}] if derived else doc["arms"]
    return {**doc, "arms": arms, "runs": [*doc["runs"], *derived]}


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
        doc = with_derived(json.loads(src.read_text()))
        plot(doc, args.docs / f"case_study_{n}.png")
        (args.docs / f"case_study_{n}.md").write_text(markdown(doc) + "\n")
        print(markdown(doc))


if __name__ == "__main__":
    main()
