"""Health indicators put to the test (issue 25, item 4; the paper's open question 2).

Across case study 1's lr grid (same small GPT-2, data and seeds; 5e-2 down to 3e-4), with the
per-module indicators sampled every 10 steps (``RunConfig.diagnostics_every``), does any of
them - dead units, activation std, gradient norm, update-to-weight ratio, per module - warn
that a run is going wrong earlier than the loss does?

    python studies/health_indicators.py --seeds 0 1 2      # the runs (~2 min each), then the analysis
    python studies/health_indicators.py --analyse-only     # again from docs/health_indicators.json

How it is judged (written before the runs were looked at, except the thresholds, which are
fitted on the calibration seed only):

* A run **goes wrong** when its final validation loss is more than ``BAD_MARGIN`` (5 %) above
  the grid's best mean (a hindsight label: a too-high lr that plateaus high or diverges).
* A **signal** fires at the first sampled step (after ``WARMUP``) where its value, averaged
  over ``SMOOTH`` samples, crosses a threshold. Each indicator of each module is one signal,
  and so is the training loss itself, treated the same way. The threshold and its direction
  come from the calibration seed (the first): just beyond the furthest value its good runs
  reach, on the side where its bad runs cross first. So on the calibration seed no signal
  fires on a good run; the other seeds are the test.
* The **loss's own warning** is the rule agent's detectors (``agents/detectors.diagnose``:
  divergence, oscillation, plateau) run step by step over the training loss, as the agent
  would see it.
* **Lead time** = the step the rule agent's detectors first fire minus the step the signal
  first fires, in each bad test run (positive: the signal warned earlier). A **false alarm**
  is a signal firing on a good test run.

Writes docs/health_indicators.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

LRS = (5e-2, 2e-2, 5e-3, 1e-3, 3e-4)
DIAGNOSTICS_EVERY = 10
WARMUP = 20  # steps before any signal may fire: the first updates move everything
SMOOTH = 3  # samples averaged before a threshold is tested
BAD_MARGIN = 0.05
INDICATORS = ("update_ratio", "grad_norm", "act_std", "dead")

log = logging.getLogger("health_indicators")


# -- the runs ------------------------------------------------------------------------------
def run_one(lr: float, seed: int, runs: Path) -> dict[str, Any]:
    import shutil

    from case_studies import Arm, Setup, run_config, wait_to_end

    from ray_interactive.runtime.launch import start_run

    setup = Setup()
    cfg = run_config(Arm(f"static_{lr:g}", lr, f"constant lr {lr:g}"), seed, setup, runs, study=3)
    cfg = cfg.model_copy(update={"diagnostics_every": DIAGNOSTICS_EVERY})
    if cfg.run_dir.exists():
        shutil.rmtree(cfg.run_dir)
    t0 = time.monotonic()
    handle = start_run(cfg)
    client = handle.client()
    wait_to_end(client)
    keys = ["loss", "eval/loss"] + [k for k in client.metric_keys() if k.startswith("health/")
                                     and k.rsplit("/", 1)[-1] in INDICATORS]
    m = client.metrics(keys=keys)
    handle.shutdown()
    shutil.rmtree(cfg.run_dir / "checkpoints", ignore_errors=True)
    ev = m.get("eval/loss", {"value": []})["value"]
    return {"lr": lr, "seed": seed, "wall_s": round(time.monotonic() - t0, 1),
            "final_eval_loss": ev[-1] if ev else None,
            "series": {k: {"step": v["step"], "value": v["value"]} for k, v in m.items()}}


# -- the analysis (pure) -------------------------------------------------------------------
def _smoothed(steps: list[int], values: list[float]) -> tuple[list[int], list[float]]:
    out_s, out_v = [], []
    for i in range(len(values)):
        window = [v if math.isfinite(v) else math.inf for v in values[max(0, i - SMOOTH + 1): i + 1]]
        if steps[i] >= WARMUP:
            out_s.append(steps[i])
            out_v.append(sum(window) / len(window))
    return out_s, out_v


def _thinned(steps: list[int], values: list[float]) -> tuple[list[int], list[float]]:
    """The loss at the indicators' sampling steps (every step is logged), so every signal,
    the loss included, is judged on the same grid of samples."""
    at = {s: v for s, v in zip(steps, values)}
    keep = [s for s in steps if s % DIAGNOSTICS_EVERY == 0]
    return keep, [at[s] for s in keep]


def signals(run: dict[str, Any]) -> dict[str, tuple[list[int], list[float]]]:
    out = {}
    for key, s in run["series"].items():
        if key.startswith("health/"):
            out[key[len("health/"):]] = _smoothed(s["step"], s["value"])
        elif key == "loss":
            out["loss (training, smoothed)"] = _smoothed(*_thinned(s["step"], s["value"]))
    return out


def first_crossing(steps: list[int], values: list[float], threshold: float, above: bool) -> int | None:
    for s, v in zip(steps, values):
        if (v > threshold) if above else (v < threshold):
            return s
    return None


def loss_warning(run: dict[str, Any]) -> tuple[int | None, str | None]:
    """The first step the rule agent's detectors fire on the training loss, and which one."""
    from ray_interactive.agents.detectors import diagnose

    loss = run["series"]["loss"]
    for i in range(WARMUP, len(loss["value"])):
        found = diagnose(loss["value"][: i + 1])
        if found is not None:
            return loss["step"][i], found.pattern
    return None, None


def calibrate(good: list[tuple[list[int], list[float]]], bad: list[tuple[list[int], list[float]]]
              ) -> tuple[float, bool] | None:
    """The threshold just beyond the good runs' range, on the side the bad runs cross first."""
    gv = [v for _, vs in good for v in vs if math.isfinite(v)]
    if not gv:
        return None
    best: tuple[float, bool, float] | None = None
    for above in (True, False):
        top = max(gv) if above else min(gv)
        threshold = top * 1.05 if above else top * 0.95
        if not above and threshold <= 0:
            continue
        fired = [first_crossing(s, v, threshold, above) for s, v in bad]
        hits = [f for f in fired if f is not None]
        if not hits:
            continue
        score = len(hits) * 10_000 - statistics.mean(hits)  # most bad runs caught, then earliest
        if best is None or score > best[2]:
            best = (threshold, above, score)
    return None if best is None else (best[0], best[1])


def analyse(runs: list[dict[str, Any]], calibration_seed: int) -> dict[str, Any]:
    by_lr: dict[float, list[float]] = {}
    for r in runs:
        if r["final_eval_loss"] is not None and math.isfinite(r["final_eval_loss"]):
            by_lr.setdefault(r["lr"], []).append(r["final_eval_loss"])
    best_mean = min(statistics.mean(v) for v in by_lr.values())
    for r in runs:
        fin = r["final_eval_loss"]
        r["bad"] = fin is None or not math.isfinite(fin) or fin > best_mean * (1 + BAD_MARGIN)
        r["loss_warning_step"], r["loss_warning"] = loss_warning(r)
    calib = [r for r in runs if r["seed"] == calibration_seed]
    test = [r for r in runs if r["seed"] != calibration_seed]
    sig = {id(r): signals(r) for r in runs}
    names = sorted({n for r in runs for n in sig[id(r)]})
    rows = []
    for name in names:
        got = calibrate([sig[id(r)][name] for r in calib if not r["bad"] and name in sig[id(r)]],
                        [sig[id(r)][name] for r in calib if r["bad"] and name in sig[id(r)]])
        bad_test = [r for r in test if r["bad"] and name in sig[id(r)]]
        good_test = [r for r in test if not r["bad"] and name in sig[id(r)]]
        if got is None:  # no threshold beyond the good runs' range is ever crossed by a bad one
            rows.append({"signal": name, "threshold": None, "direction": None, "bad_caught": 0,
                         "bad_runs": len(bad_test), "false_alarms": 0, "good_runs": len(good_test),
                         "first_step_median": None, "lead_median": None, "lead_min": None, "lead_max": None,
                         "fires": {}})
            continue
        threshold, above = got
        fires = {(r["lr"], r["seed"]): first_crossing(*sig[id(r)][name], threshold, above) for r in test}
        leads = [r["loss_warning_step"] - fires[(r["lr"], r["seed"])] for r in bad_test
                 if fires[(r["lr"], r["seed"])] is not None and r["loss_warning_step"] is not None]
        caught = [r for r in bad_test if fires[(r["lr"], r["seed"])] is not None]
        rows.append({
            "signal": name, "threshold": threshold, "direction": "above" if above else "below",
            "bad_caught": len(caught), "bad_runs": len(bad_test),
            "false_alarms": sum(fires[(r["lr"], r["seed"])] is not None for r in good_test),
            "good_runs": len(good_test),
            "first_step_median": statistics.median([fires[(r["lr"], r["seed"])] for r in caught]) if caught else None,
            "lead_median": statistics.median(leads) if leads else None,
            "lead_min": min(leads) if leads else None, "lead_max": max(leads) if leads else None,
            "fires": {f"{lr:g}/s{s}": f for (lr, s), f in fires.items()},
        })
    bad_test = [r for r in test if r["bad"]]
    good_test = [r for r in test if not r["bad"]]
    loss_row = {
        "bad_caught": sum(r["loss_warning_step"] is not None for r in bad_test), "bad_runs": len(bad_test),
        "false_alarms": sum(r["loss_warning_step"] is not None for r in good_test), "good_runs": len(good_test),
        "first_step_median": statistics.median([r["loss_warning_step"] for r in bad_test
                                                if r["loss_warning_step"] is not None] or [math.nan]),
    }
    # a signal is useful when it catches every bad test run, warns earlier (median lead > 0)
    # and raises no false alarm
    useful = [r["signal"] for r in rows if r["bad_caught"] == r["bad_runs"] and r["false_alarms"] == 0
              and (r["lead_median"] or 0) > 0]
    rows.sort(key=lambda r: (-(r["bad_caught"] - r["false_alarms"]), -(r["lead_median"] or -1e9)))
    return {"best_mean": best_mean, "bad_margin": BAD_MARGIN, "calibration_seed": calibration_seed,
            "rows": rows, "loss_detectors": loss_row, "useful": useful,
            "runs": [{k: r[k] for k in ("lr", "seed", "final_eval_loss", "bad", "loss_warning_step",
                                        "loss_warning", "wall_s")} for r in runs]}


# -- the report ----------------------------------------------------------------------------
def _f(v: Any, fmt: str = "{:g}") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def write_md(result: dict[str, Any], doc: dict[str, Any], path: Path) -> None:
    a = result
    lr_rows = sorted(a["runs"], key=lambda r: (-r["lr"], r["seed"]))
    lines = [
        "# Health indicators put to the test", "",
        f"Written by `studies/health_indicators.py` on {doc.get('date')} (commit {doc.get('commit')}); "
        f"{doc.get('cpus')} CPUs, torch {doc.get('torch')}, load (1 min) before the runs "
        f"{doc.get('loadavg_1m_at_start')}.", "",
        f"Case study 1's model and data, constant lr {', '.join(f'{x:g}' for x in LRS)}, seeds "
        f"{sorted({r['seed'] for r in a['runs']})}, 400 steps, indicators sampled every {DIAGNOSTICS_EVERY} "
        f"steps. A run goes wrong when its final validation loss is more than {BAD_MARGIN:.0%} above the best "
        f"lr's mean ({a['best_mean']:.3f}). Thresholds fitted on seed {a['calibration_seed']}, tested on the others.",
        "", "## The runs", "", "| lr | seed | final val loss | goes wrong | rule detectors first fire |",
        "|---:|---:|---:|:--:|---|",
    ]
    for r in lr_rows:
        warn = f"step {r['loss_warning_step']} ({r['loss_warning']})" if r["loss_warning_step"] is not None else "never"
        lines.append(f"| {r['lr']:g} | {r['seed']} | {_f(r['final_eval_loss'], '{:.3f}')} | "
                     f"{'yes' if r['bad'] else 'no'} | {warn} |")
    lo = a["loss_detectors"]
    lines += [
        "", "## The signals on the test seeds", "",
        f"The rule agent's loss detectors: fired on {lo['bad_caught']}/{lo['bad_runs']} runs that went wrong "
        f"(median first step {_f(lo['first_step_median'])}) and on {lo['false_alarms']}/{lo['good_runs']} "
        "that did not.", "",
        "| signal | threshold | caught (runs that went wrong) | false alarms | median first step | "
        "lead over the loss detectors: median (min-max) steps |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in a["rows"]:
        rule = "none separates the calibration runs" if r["threshold"] is None else f"{r['direction']} {r['threshold']:.3g}"
        lines.append(
            f"| {r['signal']} | {rule} | {r['bad_caught']}/{r['bad_runs']} | "
            f"{r['false_alarms']}/{r['good_runs']} | {_f(r['first_step_median'])} | "
            f"{_f(r['lead_median'])} ({_f(r['lead_min'])} to {_f(r['lead_max'])}) |")
    lines += ["", "Signals that catch every bad test run, warn earlier than the loss detectors and raise no "
              f"false alarm: {', '.join(a['useful']) or 'none'}.", ""]
    path.write_text("\n".join(lines))


def plot(doc: dict[str, Any], result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ["loss (training, smoothed)"] + [r["signal"] for r in result["rows"]
                                             if r["signal"] != "loss (training, smoothed)"][:5]
    thresholds = {r["signal"]: r["threshold"] for r in result["rows"] if r["threshold"] is not None}
    colours = dict(zip(LRS, ["#d62728", "#ff7f0e", "#9467bd", "#2ca02c", "#1f77b4"]))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, name in zip(axes.flat, shown):
        for run in doc["runs"]:
            s, v = signals(run).get(name, ([], []))
            ax.plot(s, v, color=colours.get(run["lr"], "k"), lw=1, alpha=0.8,
                    label=f"lr {run['lr']:g}" if run["seed"] == result["calibration_seed"] else None)
            warn = next((r["loss_warning_step"] for r in result["runs"]
                         if r["lr"] == run["lr"] and r["seed"] == run["seed"]), None)
            at = next((i for i, x in enumerate(s) if warn is not None and x >= warn), None)
            if at is not None:  # at the first sample from the step the detectors fired
                ax.plot([s[at]], [v[at]], "x", color=colours.get(run["lr"], "k"), ms=7)
        if name in thresholds:
            ax.axhline(thresholds[name], color="k", ls="--", lw=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_yscale("log")
        ax.set_xlabel("step")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Health indicators across the lr grid (x: the rule agent's loss detectors fire; dashed: "
                 "the threshold fitted on the calibration seed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "health_indicators")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "health_indicators.json")
    p.add_argument("--analyse-only", action="store_true")
    p.add_argument("--skip-done", action="store_true", help="keep the lr/seed pairs already in --out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from case_studies import _machine

    doc = json.loads(args.out.read_text()) if args.out.exists() and (args.analyse_only or args.skip_done) else {}
    doc.setdefault("runs", [])
    if not args.analyse_only:
        import ray

        from ray_interactive.runtime.connection import init_ray

        doc.update(_machine())  # the load before the runs
        init_ray(None)
        done = {(r["lr"], r["seed"]) for r in doc["runs"]}
        todo = [(lr, s) for s in args.seeds for lr in args.lrs if (lr, s) not in done]
        for i, (lr, seed) in enumerate(todo, 1):
            log.info("health indicators: run %d/%d, lr %g, seed %d", i, len(todo), lr, seed)
            doc["runs"].append(run_one(lr, seed, args.runs))
            args.out.write_text(json.dumps(doc))  # an interrupted study keeps what it finished
        ray.shutdown()
    if not doc["runs"]:
        print(f"no runs in {args.out}", file=sys.stderr)
        return 2
    result = analyse(doc["runs"], calibration_seed=min(r["seed"] for r in doc["runs"]))
    doc["analysis"] = result
    args.out.write_text(json.dumps(doc))
    write_md(result, doc, args.out.with_suffix(".md"))
    plot(doc, result, args.out.with_suffix(".png"))
    print(args.out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
