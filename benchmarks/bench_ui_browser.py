"""The control UI in a real browser while training saturates the machine.

What a person does first, timed in headless Chromium on the same 2 cores as a run whose
trainer uses every core and writes a checkpoint every 5 steps (hundreds pile up): load the
page (until the status bar says RUNNING), change the lr (click -> "applied at step"), open
the checkpoint picker (click -> its options shown). Several rounds, a fresh page each.

It only uses what every version of the UI has, so a past version can be measured the same
way for comparison: ``PYTHONPATH=/path/to/old/checkout python benchmarks/bench_ui_browser.py
--label "before (commit ...)"``. Rows are kept by label in ``results/ui_browser.json``.

    python benchmarks/bench_ui_browser.py [--label after] [--rounds 3] [--warmup-s 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine, median, save  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def measure_round(url: str, lr: float) -> dict[str, float]:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(600_000)
            t0 = time.perf_counter()
            page.goto(url)
            expect(page.locator("#status")).to_contain_text("RUNNING", timeout=600_000)
            loaded = time.perf_counter() - t0
            page.locator("#opt-value textarea, #opt-value input").first.fill(f"{lr:g}")
            t1 = time.perf_counter()
            page.locator("#opt-apply").click()
            expect(page.locator("#opt-msg")).to_contain_text("applied at step", timeout=600_000)
            lr_applied = time.perf_counter() - t1
            page.get_by_role("tab", name="Run & checkpoints").click()
            t2 = time.perf_counter()
            page.locator("#ckpt-select input").first.click()
            expect(page.get_by_role("option").first).to_be_visible(timeout=600_000)
            picker = time.perf_counter() - t2
            options = page.get_by_role("option").count()
        finally:
            browser.close()
    return {"page_loaded_s": loaded, "lr_applied_s": lr_applied, "first_lr_after_load_s": loaded + lr_applied,
            "picker_open_s": picker, "picker_options": options}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="after")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup-s", type=float, default=60.0, help="training before the first page load")
    args = ap.parse_args()
    load_before = machine()["loadavg_1m_at_start"]

    import ray_interactive
    from ray_interactive.core.config import RunConfig, TaskSpec
    from ray_interactive.runtime.launch import start_run
    from ray_interactive.ui.control_ui import build_ui
    from ray_interactive.ui.dashboard import Dashboard

    code = str(Path(ray_interactive.__file__).resolve().parents[1])
    doc = {
        "name": "bench-ui-browser",
        "task": TaskSpec(target="ray_interactive.examples.regression:RegressionTask", kwargs={"width": 512, "depth": 4}),
        "run_dir": Path(tempfile.mkdtemp()) / "run",
        "torch_threads": os.cpu_count() or 2,
        "checkpoint_every": 5,
    }
    if "checkpoint_keep" in RunConfig.model_fields:  # versions with retention: keep them all, as before
        doc["checkpoint_keep"] = None
    handle = start_run(RunConfig(**doc))
    client = handle.client()
    ui = build_ui(Dashboard(client), "bench-ui-browser", refresh_s=1.5)  # the browser's timer, as shipped
    ui.queue(default_concurrency_limit=8)
    _, url, _ = ui.launch(prevent_thread_lock=True, quiet=True, enable_monitoring=False)
    rounds = []
    try:
        time.sleep(args.warmup_s)
        for i in range(args.rounds):
            r = measure_round(url, 1e-3 if i % 2 else 2e-3)
            r["checkpoints"] = len(client.checkpoints())
            print(f"round {i}: " + ", ".join(f"{k} {v:.3g}" for k, v in r.items()), flush=True)
            rounds.append(r)
        steps = client.status()["step"]
    finally:
        ui.close()
        handle.shutdown()

    path = HERE / "results" / "ui_browser.json"
    stored = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    stored["rows"][args.label] = {"machine": {**machine(), "loadavg_1m_at_start": load_before}, "code": code,
                                  "rounds": rounds, "steps": steps}
    lines = [
        "## The control UI in a browser while training saturates the machine (`bench_ui_browser.py`)",
        "",
        "Headless Chromium on the same 2 cores as a run training on every core with a checkpoint every 5",
        "steps; per round a fresh page: load (until RUNNING), change the lr (click -> \"applied at step\"),",
        "open the checkpoint picker (click -> options shown). Medians over the rounds (range in brackets).",
        "",
        "| UI | rounds | page loaded | lr: click -> applied | first lr change after the page load began | picker open | options in the picker | checkpoints | load at start | measured |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, row in stored["rows"].items():
        rs = row["rounds"]

        def cell(key: str, rs: list[dict[str, float]] = rs) -> str:
            xs = [r[key] for r in rs]
            return f"{median(xs):.1f} s ({min(xs):.1f}-{max(xs):.1f})"

        lines.append(
            f"| {label} | {len(rs)} | {cell('page_loaded_s')} | {cell('lr_applied_s')} | {cell('first_lr_after_load_s')} "
            f"| {cell('picker_open_s')} | {median([r['picker_options'] for r in rs]):.0f} | "
            f"{median([r['checkpoints'] for r in rs]):.0f} | {row['machine']['loadavg_1m_at_start']} | {row['machine']['date']} |"
        )
    save("ui_browser", stored, "\n".join(lines))


if __name__ == "__main__":
    main()
