"""Publishing weights: published by the trainer -> loaded by a subscriber in another process.

A run trains a ~10M-parameter MLP (the regression example, width 1800, depth 4). A
subscriber in another process (a Ray actor that attaches with ``ri.connect`` and runs a
:class:`~ray_interactive.runtime.client.WeightSubscriber` in the background) holds the same
model. The driver sends ``publish_weights`` every ``--interval`` s; for each version the
latency is the subscriber's wall time once ``load_state_dict`` has returned minus the
version's ``time`` (when the trainer began publishing it), split into: the step loop held
(at the publish, and the next optimizer step waiting for the ``ray.put`` taken beside its
forward and backward: the weights' only copy), that ``ray.put`` and the report, the
subscriber seeing it, fetching it (zero-copy from the object store) and loading it. The trainer-side cost is that hold
compared with the step time, and the step time of the steps that overlap the background
work compared with the others.

    python benchmarks/bench_weights.py [--versions 24] [--interval 0.75]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray  # noqa: E402
from _common import machine, median, percentile, save  # noqa: E402

from ray_interactive.core.config import RunConfig, TaskSpec  # noqa: E402
from ray_interactive.runtime.launch import start_run  # noqa: E402

TASK = "ray_interactive.examples.regression:RegressionTask"
MODEL = {"in_dim": 256, "width": 1800, "depth": 4, "rows": 8192}
WARMUP = 2  # versions left out of the figures (first fetches map new object-store pages)
KEEP = 8  # weights_keep


@ray.remote(num_cpus=0)
class Subscriber:
    """A deployed model in its own process, following the run's published weights."""

    def __init__(self, run: str, model_kwargs: dict[str, Any]) -> None:
        import torch

        import ray_interactive as ri
        from ray_interactive.examples.regression import RegressionTask

        torch.set_num_threads(1)
        self.model = RegressionTask(**model_kwargs).build_model()
        self.swaps: list[dict[str, Any]] = []
        self.sub = ri.connect(run).subscribe(self.model, on_swap=self._record).start()

    def _record(self, v: Any) -> None:
        self.swaps.append({**v.to_dict(), **self.sub.last_swap})

    def results(self) -> list[dict[str, Any]]:
        return list(self.swaps)

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def stop(self) -> None:
        self.sub.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--versions", type=int, default=24)
    ap.add_argument("--interval", type=float, default=0.75, help="seconds between publish_weights commands")
    args = ap.parse_args()
    info = machine()
    ray.init(include_dashboard=False, log_to_driver=False, namespace="ray_interactive")
    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(
            name="bench-weights",
            task=TaskSpec(target=TASK, kwargs=MODEL),
            run_dir=Path(tmp) / "run",
            batch_size=64,
            torch_threads=1,
            weights_keep=KEEP,
        )
        handle = start_run(config)
        client = handle.client()
        sub = Subscriber.remote(config.name, MODEL)
        params = ray.get(sub.params.remote())
        while client.status()["step"] < 10:
            time.sleep(0.1)
        sent = []
        for _ in range(args.versions):
            time.sleep(args.interval)
            sent.append(client.send("publish_weights"))
        records = [client.wait(r, timeout=60) for r in sent]
        assert all(r.status.value == "applied" for r in records), [r.message for r in records]
        last = int(records[-1].message.split()[3])
        deadline = time.monotonic() + 30
        while (not (swaps := ray.get(sub.results.remote())) or swaps[-1]["version"] < last) and time.monotonic() < deadline:
            time.sleep(0.1)
        ray.get(sub.stop.remote())
        metrics = client.metrics(keys=["step_time_s", "publish_wait_s"])
        steps = metrics["step_time_s"]
        waits = metrics.get("publish_wait_s", {"step": [], "value": []})
        handle.shutdown()
    ray.shutdown()

    mine = {int(r.message.split()[3]) for r in records}
    swaps = [s for s in swaps if s["version"] in mine]
    seen_versions = len(swaps)
    swaps = swaps[WARMUP:]
    total = [s["loaded_at"] - s["time"] for s in swaps]
    # The step loop is held at the publish (finiteness check; the copy too where it is not
    # taken beside the next step), then the next optimizer step waits for a copy still running.
    wait_at = dict(zip(waits["step"], waits["value"]))
    parts = {
        "step loop held": [s["hold_s"] + wait_at.get(s["step"] + 1, 0.0) for s in swaps],
        "ray.put (background: the one copy)": [s["published_at"] - s["time"] - s["hold_s"] for s in swaps],
        "report -> subscriber sees it": [s["seen_at"] - s["published_at"] for s in swaps],
        "fetch (ray.get)": [s["fetched_at"] - s["seen_at"] for s in swaps],
        "load_state_dict": [s["loaded_at"] - s["fetched_at"] for s in swaps],
    }
    # Steps that overlap a background put (the 3 after each published step) vs the others.
    published_steps = {r.applied_step for r in records}
    near = {s + k for s in published_steps for k in (1, 2, 3)}
    step_s = dict(zip(steps["step"], steps["value"]))
    after = [v for s, v in step_s.items() if s in near]
    other = [v for s, v in step_s.items() if s not in near and s > 10]
    result = {
        "machine": info,
        "params": params,
        "mb": swaps[0]["nbytes"] / 1e6 if swaps else None,
        "versions_published": len(records),
        "versions_loaded": seen_versions,
        "p50_s": percentile(total, 0.5),
        "p95_s": percentile(total, 0.95),
        "max_s": max(total),
        "parts_p50_ms": {k: percentile(v, 0.5) * 1000 for k, v in parts.items()},
        "hold_p50_ms": percentile(parts["step loop held"], 0.5) * 1000,
        "hold_max_ms": max(parts["step loop held"]) * 1000,
        "at_publish_p50_ms": percentile([s["hold_s"] for s in swaps], 0.5) * 1000,
        "next_step_wait_p50_ms": percentile([wait_at.get(s["step"] + 1, 0.0) for s in swaps], 0.5) * 1000,
        "step_ms_median": median(other) * 1000,
        "step_ms_after_publish_median": median(after) * 1000 if after else None,
        "total_s": total,
        "parts_ms": {k: [round(x * 1000, 2) for x in v] for k, v in parts.items()},
    }
    cold = KEEP  # about the first KEEP + 2 versions find no freed memory to reuse (measured)
    puts = parts["ray.put (background: the one copy)"]
    result["put_cold_p50_ms"] = percentile(puts[:cold], 0.5) * 1000
    result["put_warm_p50_ms"] = percentile(puts[cold:], 0.5) * 1000
    result["warm_p50_s"] = percentile(total[cold:], 0.5)
    md = [
        "## Publishing weights: published -> loaded by a subscriber in another process",
        "",
        f"`python benchmarks/bench_weights.py --versions {args.versions} --interval {args.interval}` on "
        f"{info['cpus']} CPUs, load {info['loadavg_1m_at_start']} at start, {info['date']}. A {params / 1e6:.1f}M-parameter "
        f"MLP ({result['mb']:.0f} MB in float32) trains; the driver sends `publish_weights` every {args.interval} s; "
        "a Ray actor (another process) follows with a `WeightSubscriber` and loads each version into its own copy of "
        f"the model. Latency = loaded in the subscriber's module - the version's `time` (the trainer starts its copy); "
        f"{len(total)} versions after {WARMUP} warm-up ones. Target: p50 <= 0.5 s.",
        "",
        "| versions loaded / published | p50 | p95 | max |",
        "|---:|---:|---:|---:|",
        f"| {seen_versions}/{len(records)} | **{result['p50_s'] * 1000:.0f} ms** | {result['p95_s'] * 1000:.0f} ms | "
        f"{result['max_s'] * 1000:.0f} ms |",
        "",
        "Where the time goes (p50 of each part):",
        "",
        "| " + " | ".join(parts) + " |",
        "|" + "---:|" * len(parts),
        "| " + " | ".join(f"{v:.1f} ms" for v in result["parts_p50_ms"].values()) + " |",
        "",
        f"Trainer side: the step loop is held **{result['hold_p50_ms']:.1f} ms** p50 "
        f"(max {result['hold_max_ms']:.1f} ms; target <= 5 ms): {result['at_publish_p50_ms']:.1f} ms at the publish "
        "(the finiteness check, a copy of the buffers, handing the parameters to a thread that puts them in the "
        "object store: their only copy) and "
        f"{result['next_step_wait_p50_ms']:.1f} ms in the next optimizer step waiting for that `ray.put` (p50s), "
        f"against a median step of {result['step_ms_median']:.1f} ms; "
        f"the 3 steps after each publish (overlapping the copy and the `ray.put` on this 2-core machine) take "
        f"{result['step_ms_after_publish_median']:.1f} ms (median).",
        "",
        f"The tail is the object store's first touch of its memory: until the run has dropped versions "
        f"(it keeps {KEEP}; the first {KEEP} measured versions here), each `ray.put` fills fresh shared-memory pages "
        f"(p50 {result['put_cold_p50_ms']:.0f} ms); "
        f"after that it reuses freed ones (p50 {result['put_warm_p50_ms']:.0f} ms), and a version is loaded "
        f"{result['warm_p50_s'] * 1000:.0f} ms (p50) after the copy began.",
    ]
    save("weights", result, "\n".join(md))


if __name__ == "__main__":
    main()
