"""Control UI refresh cost for runs with 1k, 10k and 100k logged steps, and how the UI
answers while training saturates the machine.

For each size a run's controller actor is given that many steps of metrics (the keys a
real run logs: loss, lr, grad_norm, samples_per_s, step_time_s, eval/loss every 10th
step) on two branches, through the same call the trainer uses. Then the UI's refresh
endpoint is called over HTTP with gradio_client, as the browser's timer does, and we
report the server-side time of the refresh (median, p95) and the bytes of its answer.
The series are thinned on the server to 400 points per branch and key, so the cost
should hardly grow with the run's length. For scale: ``raw`` is the same refresh with
thinning off (every point sent).

Under load: a run whose trainer uses every core (an MLP with 2 torch threads, a checkpoint
every 10 steps, so hundreds pile up) is steered through the UI's endpoints while it trains:
the time a refresh takes, an lr change from click to "applied", the lists (``/choices``)
and a checkpoint page; and the trainer's steps/s meanwhile.

    python benchmarks/bench_ui.py [--sizes 1000 10000 100000] [--calls 20] [--load-s 60]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import ray  # noqa: E402
from _common import machine, median, percentile, save  # noqa: E402

from ray_interactive.core.config import RunConfig, TaskSpec  # noqa: E402
from ray_interactive.core.messages import BranchCreated, Progress, TrainerStatus  # noqa: E402
from ray_interactive.runtime.launch import start_run  # noqa: E402
from ray_interactive.ui.control_ui import build_ui  # noqa: E402
from ray_interactive.ui.dashboard import Dashboard  # noqa: E402


def fill(controller: object, steps: int) -> None:
    """``steps`` steps of metrics on main, and on a branch forked at half way."""
    rng = np.random.default_rng(0)
    t0 = time.time() - steps * 0.05
    for branch, lo in (("main", 1), ("bench-branch", steps // 2)):
        for start in range(lo, steps + 1, 5000):
            rows = []
            for s in range(start, min(start + 5000, steps + 1)):
                row = {"loss": float(2.0 / np.sqrt(s) + 0.05 * rng.random()), "lr": 1e-3, "grad_norm": float(rng.random()),
                       "samples_per_s": 1000.0 + float(rng.random()), "step_time_s": 0.01}
                if s % 10 == 0:
                    row["eval/loss"] = row["loss"]
                rows.append((s, t0 + s * 0.05, row))
            status = TrainerStatus(status="paused", step=steps, branch="main", time=time.time())
            events = ([BranchCreated(name="bench-branch", parent="main", checkpoint="main@bench", step=lo)]
                      if branch != "main" and start == lo else [])
            report = Progress(branch=branch, status=status, rows=rows, events=events)
            ray.get(controller.trainer_progress.remote(report))  # type: ignore[attr-defined]


def measure(url: str, calls: int) -> tuple[list[float], list[int]]:
    from gradio_client import Client

    gc = Client(url, verbose=False)
    times, sizes = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        out = gc.predict("step", 0.6, False, None, None, None, "update_ratio", None, api_name="/refresh")
        times.append(time.perf_counter() - t0)
        sizes.append(len(json.dumps(out, default=str)))
    return times, sizes


def under_load(tmp: Path, seconds: float) -> dict[str, float]:
    """Steer a saturating run through the UI for ``seconds``; times of each kind of call."""
    from gradio_client import Client

    config = RunConfig(
        name="bench-ui-load",
        task=TaskSpec(target="ray_interactive.examples.regression:RegressionTask", kwargs={"width": 512, "depth": 4}),
        run_dir=tmp / "load",
        torch_threads=os.cpu_count() or 2,  # every core: the machine is saturated
        checkpoint_every=10,
        checkpoint_keep=None,  # they pile up, as in the report that prompted this
    )
    handle = start_run(config)
    client = handle.client()
    ui = build_ui(Dashboard(client), config.name, refresh_s=3600)
    ui.queue(default_concurrency_limit=8)
    _, url, _ = ui.launch(prevent_thread_lock=True, quiet=True, enable_monitoring=False)
    try:
        time.sleep(10)  # training is under way, checkpoints are piling up
        gc = Client(url, verbose=False)
        times: dict[str, list[float]] = {"refresh": [], "lr_applied": [], "choices": [], "checkpoint_page": []}
        step0, t_start = client.status()["step"], time.monotonic()
        lr = 1e-3
        while time.monotonic() - t_start < seconds:
            for name, call in (
                ("refresh", lambda: gc.predict("step", 0.6, False, None, None, None, "update_ratio", None, api_name="/refresh")),
                ("lr_applied", lambda lr=lr: gc.predict("all", "lr", f"{lr:g}", api_name="/update_optimizer")),
                ("choices", lambda: gc.predict(api_name="/choices")),
                ("checkpoint_page", lambda: gc.predict(1, api_name="/checkpoints")),
            ):
                t0 = time.perf_counter()
                out = call()
                times[name].append(time.perf_counter() - t0)
                if name == "lr_applied":
                    assert "applied at step" in out, out
                    lr = 2e-3 if lr == 1e-3 else 1e-3
            time.sleep(0.5)
        steps_per_s = (client.status()["step"] - step0) / (time.monotonic() - t_start)
        checkpoints = len(client.checkpoints())
    finally:
        ui.close()
        handle.shutdown()
    out: dict[str, float] = {"steps_per_s": steps_per_s, "checkpoints": checkpoints, "calls": len(times["refresh"])}
    for name, ts in times.items():
        out[f"{name}_median_s"] = median(ts)
        out[f"{name}_p95_s"] = percentile(ts, 0.95)
        out[f"{name}_max_s"] = max(ts)
    print("under load: " + ", ".join(f"{k} {v:.3g}" for k, v in out.items()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 100000])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--load-s", type=float, default=60.0, help="seconds of steering under load (0: skip)")
    args = ap.parse_args()
    load_before = machine()["loadavg_1m_at_start"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    results = {}
    for steps in args.sizes:
        config = RunConfig(
            name=f"bench-ui-{steps}",
            task=TaskSpec(target="ray_interactive.examples.regression:RegressionTask"),
            run_dir=tmp / str(steps),
            start_paused=True,  # the step loop idles: only the UI's cost is measured
            torch_threads=1,
        )
        handle = start_run(config)
        fill(handle.controller, steps)
        client = handle.client()
        per = {}
        for mode, max_points in (("thinned", 400), ("raw", 10**9)):
            ui = build_ui(Dashboard(client, max_points=max_points), config.name, refresh_s=3600)
            ui.queue()
            _, url, _ = ui.launch(prevent_thread_lock=True, quiet=True, enable_monitoring=False)
            try:
                times, sizes = measure(url, args.calls if mode == "thinned" or steps <= 10000 else max(3, args.calls // 5))
            finally:
                ui.close()
            per[mode] = {"median_s": median(times), "p95_s": percentile(times, 0.95), "bytes": median(sizes)}
            print(f"{steps} steps {mode}: {per[mode]['median_s'] * 1000:.0f} ms, {per[mode]['bytes'] / 1024:.0f} KiB", flush=True)
        results[steps] = per
        handle.shutdown()
    loaded = under_load(tmp, args.load_s) if args.load_s > 0 else {}

    result = {"machine": {**machine(), "loadavg_1m_at_start": load_before}, "args": vars(args), "sizes": results,
              "under_load": loaded}
    m = result["machine"]
    lines = [
        "## Control UI refresh cost (`bench_ui.py`)",
        "",
        "One refresh = what the browser's timer asks for every 1.5 s (status, 7 plots for every branch, branch tree,",
        "history, optimizer and data tables), called over HTTP with gradio_client; two branches of metrics.",
        "`thinned`: the UI as shipped (min/max buckets, 400 points per series); `raw`: thinning off, for scale.",
        "",
        "| logged steps | refresh median | p95 | bytes sent | raw: median | raw: bytes |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for steps, per in results.items():
        t, r = per["thinned"], per["raw"]
        lines.append(
            f"| {steps:,} | {t['median_s'] * 1000:.0f} ms | {t['p95_s'] * 1000:.0f} ms | {t['bytes'] / 1024:.0f} KiB "
            f"| {r['median_s'] * 1000:.0f} ms | {r['bytes'] / 1024:.0f} KiB |"
        )
    if loaded:
        r = loaded
        cells = [
            f"{r[f'{k}_median_s'] * 1000:.0f} / {r[f'{k}_p95_s'] * 1000:.0f} / {r[f'{k}_max_s'] * 1000:.0f} ms"
            for k in ("refresh", "lr_applied", "choices", "checkpoint_page")
        ]
        lines += [
            "",
            f"**While training saturates the machine** (an MLP on {m['cpus']} torch threads, a checkpoint every 10 steps;",
            f"{args.load_s:g} s of steering, each call over HTTP as the browser makes it): median / p95 / max.",
            "",
            "| refresh | lr change -> applied | lists (/choices) | checkpoint page | checkpoints | trainer steps/s |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {' | '.join(cells)} | {r['checkpoints']:.0f} | {r['steps_per_s']:.1f} |",
        ]
    lines += ["", f"Measured {m['date']} on {m['cpus']} CPUs, load {m['loadavg_1m_at_start']} at start."]
    save("ui", result, "\n".join(lines))


if __name__ == "__main__":
    main()
