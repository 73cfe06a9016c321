"""What reporting to experiment trackers (``report_to``) costs.

Three numbers, each with and without trackers, in alternating rounds (medians reported):

* **report**: the controller's own time per metric report (``Controller.trainer_progress``,
  in this process, no Ray): what its lock is held for. With trackers it only queues the
  report; the feed's thread writes it. Measured with that thread caught up (the added work),
  and back to back while it writes (``busy``: it shares the GIL, so a report may wait for it).
  (Profiled: what grows is the rename of ``status.json`` each report does, waiting on the
  disk that TensorBoard and MLflow's SQLite write to; queueing the report takes microseconds.)
* **drain**: how fast that thread writes reports to each tracker (reports/s, 5 rows x 6
  metrics each): whether a tracker keeps up with a run reporting every 0.5 s.
* **step**: a plain loop steered with ``ri.steer`` (a tiny model, so the fixed cost shows),
  its controller on the local Ray reporting to TensorBoard + MLflow or to nothing.

    python benchmarks/bench_trackers.py        # writes results/trackers.json
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import HERE, machine  # noqa: E402

from ray_interactive.core.config import RunConfig  # noqa: E402
from ray_interactive.core.controller import Controller  # noqa: E402
from ray_interactive.core.messages import Progress, TrainerStatus  # noqa: E402
from ray_interactive.core.trackers import Rows, RunInfo, TrackerFeed  # noqa: E402

ROUNDS = 3
REPORTS = 300
TRACKERS = [[], ["tensorboard"], ["mlflow"], ["tensorboard", "mlflow"]]


def report(step: int) -> Progress:
    rows = [(s, time.time(), {"loss": 1.0 / s, "lr": 1e-3, "grad_norm": 0.5, "samples_per_s": 900.0,
                              "eval/loss": 0.9, "step_time_ms": 1.1}) for s in range(step * 5 + 1, step * 5 + 6)]
    status = TrainerStatus(status="running", step=step * 5 + 5, branch="main", time=time.time())
    return Progress(branch="main", status=status, rows=rows)


def report_us(report_to: list[str], busy: bool) -> float:
    """Median controller time per report. ``busy``: back to back, the feed's thread writing all
    the while (it shares the GIL: a report may wait for a switch); else each report once the
    feed has written the last one (the controller's own added work)."""
    c = Controller(RunConfig(name="bench", run_dir=Path(tempfile.mkdtemp()), report_to=report_to,
                             metrics_flush_s=3600.0))
    times = []
    for i in range(REPORTS):
        msg = report(i)
        if not busy and c.trackers is not None:
            while c.trackers.written < i:
                time.sleep(0.0005)
        t0 = time.perf_counter()
        c.trainer_progress(msg)
        times.append(time.perf_counter() - t0)
    c.close()
    return statistics.median(times) * 1e6


def drain_per_s(name: str) -> float:
    """Reports a tracker writes per second (opening it not counted)."""
    feed = TrackerFeed([name], RunInfo("bench", Path(tempfile.mkdtemp()), resumed=False), flush_s=3600.0)
    feed.put(Rows("main", report(0).rows))
    while feed.written < 1:  # opened, first report written
        time.sleep(0.01)
    t0 = time.perf_counter()
    for i in range(1, REPORTS + 1):
        feed.put(Rows("main", report(i).rows))
    while feed.written < REPORTS + 1:
        time.sleep(0.001)
    elapsed = time.perf_counter() - t0
    feed.close()
    return REPORTS / elapsed


def step_us(report_to: list[str], steps: int = 3000) -> float:
    """Median wall time per step of a steered plain loop (after 200 warm-up steps)."""
    import ray_interactive as ri

    torch.manual_seed(0)
    model = torch.nn.Linear(16, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(32, 16)
    times = []
    with ri.steer(f"bench-trackers-{len(report_to)}", model, opt, run_dir=Path(tempfile.mkdtemp()),
                  max_steps=steps + 200, report_to=report_to, metrics_interval_s=0.5, checkpoint_interval_s=None) as s:
        while s.running:
            t0 = time.perf_counter()
            loss = model(x).pow(2).mean()
            loss.backward()
            s.step(loss=loss)
            times.append(time.perf_counter() - t0)
    return statistics.median(times[200:]) * 1e6


def main() -> None:
    import ray

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    facts = machine()
    reports: dict[str, list[float]] = {"+".join(t) or "none": [] for t in TRACKERS}
    busy: dict[str, list[float]] = {"+".join(t) or "none": [] for t in TRACKERS}
    for _ in range(ROUNDS):
        for t in TRACKERS:
            reports["+".join(t) or "none"].append(report_us(t, busy=False))
            busy["+".join(t) or "none"].append(report_us(t, busy=True))
    drains = {name: statistics.median(drain_per_s(name) for _ in range(3)) for name in ("tensorboard", "mlflow")}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    steps: dict[str, list[float]] = {"none": [], "tensorboard+mlflow": []}
    for _ in range(3):
        steps["none"].append(step_us([]))
        steps["tensorboard+mlflow"].append(step_us(["tensorboard", "mlflow"]))
    ray.shutdown()
    result = {
        "machine": facts,
        "report_us": {k: round(statistics.median(v), 1) for k, v in reports.items()},
        "report_us_rounds": {k: [round(x, 1) for x in v] for k, v in reports.items()},
        "report_us_busy": {k: round(statistics.median(v), 1) for k, v in busy.items()},
        "report_us_busy_rounds": {k: [round(x, 1) for x in v] for k, v in busy.items()},
        "drain_reports_per_s": {k: round(v) for k, v in drains.items()},
        "rows_per_report": 5, "metrics_per_row": 6,
        "step_us": {k: round(statistics.median(v), 1) for k, v in steps.items()},
        "step_us_rounds": {k: [round(x, 1) for x in v] for k, v in steps.items()},
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "trackers.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("rounds") and k != "machine"}, indent=1))


if __name__ == "__main__":
    main()
