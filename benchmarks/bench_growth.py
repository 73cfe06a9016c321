"""What a run's everyday operations cost as the run grows.

Each dimension grows one thing and times the operations that could feel it, on the real
classes a run uses (``DataBuffer`` - the buffer actor's logic - with a durable directory,
and ``Controller`` - the controller actor's - with its command log and metric files):

* **rows** of one live source (1k -> 1M, 64-row ingests): a 64-row uniform draw, a
  64-row fresh-first draw, an ingest; with the default memory cap (rows in memory) and
  with a 4 MB cap (older rows served from the memory-mapped segments); and the floor, one
  Arrow ``take`` of 64 random rows from a single record batch of as many rows (what
  memory, not our code, costs as the rows grow);
* **sources** (1 -> 100 live sources of 1k rows): a draw, an ingest, the buffer's stats;
* **checkpoints** the controller lists (10 -> 10k, every 10th tagged): one more saved,
  the UI's checkpoint page, ``status``, a dashboard refresh;
* **branches** (1 -> 100, 50 metric rows each): a dashboard refresh, ``status``;
* **logged commands** (100 -> 100k): one more submitted, a loop's poll, the newest 50,
  a dashboard refresh;
* **metric keys** per row (10 -> 1k, 200 rows): one report of a row, a dashboard refresh
  (4 keys), the key list.

Every figure is the median of ``--repeats`` timings (each op repeated, in microseconds),
taken right after the thing has grown to that size, in this process (Ray's transport is
not counted: it is the same at every size). The "x" columns are the figure over its value
at the smallest size: flat is ~1.

    python benchmarks/bench_growth.py [--max-rows 1000000] [--repeats 200] [--passes 2]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
from _common import HERE, machine, median, save  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ray_interactive.core.commands import UpdateOptimizer  # noqa: E402
from ray_interactive.core.config import BufferConfig, RunConfig, TaskSpec  # noqa: E402
from ray_interactive.core.controller import Controller  # noqa: E402
from ray_interactive.core.messages import (  # noqa: E402
    BranchCreated,
    CheckpointInfo,
    Progress,
    RunStatus,
    TrainerStatus,
)
from ray_interactive.core.task import DataSource  # noqa: E402
from ray_interactive.data.buffer import DataBuffer  # noqa: E402

SCHEMA = pa.schema([("id", pa.int64()), ("x", pa.float32()), ("text", pa.string())])
DASH_KEYS = ["loss", "lr", "grad_norm", "val_loss"]
DIMS = ("rows", "rows_capped", "sources", "checkpoints", "branches", "commands", "metric_keys")


def rows_table(first: int, n: int = 64) -> pa.Table:
    ids = np.arange(first, first + n)
    return pa.table({"id": ids, "x": (ids % 97).astype(np.float32), "text": [f"row {i} of the source" for i in ids]},
                    schema=SCHEMA)


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median microseconds of ``fn()`` over ``repeats`` calls."""
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return median(ts) * 1e6


def grow_rows(tmp: Path, max_rows: int, repeats: int, memory_mb: float) -> list[dict[str, Any]]:
    """One live source grown to each size; draws of both policies and ingests at each."""
    sizes = [s for s in (1_000, 10_000, 100_000, 1_000_000, 10_000_000) if s <= max_rows]
    out = []
    cfg = BufferConfig(memory_mb=memory_mb)
    uni = DataBuffer([DataSource("live", schema=SCHEMA, policy="uniform")], directory=tmp / f"uni{memory_mb}", config=cfg)
    fresh = DataBuffer([DataSource("live", schema=SCHEMA, policy="fresh")], directory=tmp / f"fresh{memory_mb}", config=cfg)
    n = 0
    bar = tqdm(total=max_rows, desc=f"rows (memory cap {memory_mb:g} MB)", unit="row", leave=False)
    for size in sizes:
        while n < size:
            t = rows_table(n)
            uni.ingest(t, "live")
            fresh.ingest(t, "live")
            n += 64
            bar.update(64)
        ids = itertools.count(n, 64)

        def ingest(ids: Iterator[int] = ids) -> None:
            uni.ingest(rows_table(next(ids)), "live")

        # the floor: one take of 64 random rows from one record batch of as many rows, nothing else
        floor = rows_table(0, n).to_batches()[0]
        rng = np.random.default_rng(0)

        def take_floor(floor: pa.RecordBatch = floor, rng: np.random.Generator = rng) -> None:
            floor.take(pa.array(rng.integers(0, floor.num_rows, 64)))

        row = {"rows": n,
               "take_floor_us": timed(take_floor, repeats),
               "draw_uniform_us": timed(lambda: uni.next_batches(64), repeats),
               "draw_fresh_us": timed(lambda: fresh.next_batches(64), repeats),
               "ingest_us": timed(ingest, repeats),
               "hot_store": type(uni._sources["live"].hot).__name__,
               "cold_rows": uni._sources["live"].cold_rows}
        n = uni._sources["live"].rows  # the timed ingests added rows
        while fresh._sources["live"].rows < n:  # keep both the same size
            fresh.ingest(rows_table(fresh._sources["live"].rows), "live")
        out.append(row)
    bar.close()
    uni.close()
    fresh.close()
    return out


def grow_sources(tmp: Path, repeats: int) -> list[dict[str, Any]]:
    out = []
    for count in (1, 10, 100):
        buf = DataBuffer([DataSource(f"s{i}", schema=SCHEMA, policy="uniform") for i in range(count)],
                         directory=tmp / f"sources{count}", config=BufferConfig(fsync=False))
        for i in range(count):
            for first in range(0, 1_000, 100):
                buf.ingest(rows_table(first, 100), f"s{i}")
        turns = itertools.count()

        def ingest(buf: DataBuffer = buf, count: int = count, k: Iterator[int] = turns) -> None:
            i = next(k)
            buf.ingest(rows_table(1_000 + 64 * i), f"s{i % count}")

        out.append({"sources": count, "draw_uniform_us": timed(lambda b=buf: b.next_batches(64), repeats),
                    "ingest_us": timed(ingest, repeats), "stats_us": timed(buf.stats, max(10, repeats // 10))})
        buf.close()
    return out


def _controller(tmp: Path, name: str) -> Controller:
    cfg = RunConfig(name=name, task=TaskSpec(target="ray_interactive.examples.regression:RegressionTask"),
                    run_dir=tmp / name)
    c = Controller(cfg)
    c.trainer_progress(Progress(branch="main", status=_status(0), rows=[]))
    return c


def _status(step: int) -> TrainerStatus:
    return TrainerStatus(status=RunStatus.RUNNING, step=step, branch="main", time=time.time())


def _dashboard(c: Controller) -> Callable[[], Any]:
    return lambda: c.dashboard(DASH_KEYS, max_points=400)


def grow_checkpoints(tmp: Path, repeats: int) -> list[dict[str, Any]]:
    c = _controller(tmp, "checkpoints")
    out, n = [], 0
    for size in (10, 100, 1_000, 10_000):
        while n < size:
            c.checkpoint_saved(CheckpointInfo(id=f"main@{n}", branch="main", step=n, created_at=1.0 + n,
                                              reason="periodic", tag=f"t{n}" if n % 10 == 0 else None))
            n += 1
        new_ids = itertools.count(n)

        def save_one(k: Iterator[int] = new_ids) -> None:
            i = next(k)
            c.checkpoint_saved(CheckpointInfo(id=f"x@{i}", branch="main", step=i, created_at=1e9 + i, reason="periodic"))
            c.checkpoints_removed([f"x@{i}"])

        few = max(10, repeats // 10)
        out.append({"checkpoints": size, "save_us": timed(save_one, repeats),
                    "page_us": timed(lambda: c.checkpoint_page(0, 50), few),
                    "status_us": timed(c.status, few), "dashboard_us": timed(_dashboard(c), few)})
    c.close()
    return out


def grow_branches(tmp: Path, repeats: int) -> list[dict[str, Any]]:
    c = _controller(tmp, "branches")
    out, n = [], 1
    c.checkpoint_saved(CheckpointInfo(id="main@0", branch="main", step=0, created_at=1.0, reason="periodic"))
    for size in (1, 10, 100):
        while n < size:
            name = f"b{n}"
            c.branch_created(BranchCreated(name=name, parent="main", checkpoint="main@0", step=0))
            c.trainer_progress(Progress(branch=name, status=_status(50),
                                        rows=[(s, 1.0, {"loss": 1.0 / (s + 1), "lr": 1e-3}) for s in range(50)]))
            n += 1
        few = max(10, repeats // 10)
        out.append({"branches": size, "status_us": timed(c.status, few), "dashboard_us": timed(_dashboard(c), few)})
    c.close()
    return out


def grow_commands(tmp: Path, repeats: int, max_commands: int) -> list[dict[str, Any]]:
    c = _controller(tmp, "commands")
    out, n = [], 0
    sizes = [s for s in (100, 1_000, 10_000, 100_000) if s <= max_commands]
    bar = tqdm(total=sizes[-1], desc="commands", unit="cmd", leave=False)
    for size in sizes:
        while n < size:
            c.submit(UpdateOptimizer(params={"lr": 1e-3 * (1 + n % 7)}))
            n += 1
            bar.update(1)
        few = max(10, repeats // 10)
        last = c.next_seq - 1

        def submit() -> None:
            c.submit(UpdateOptimizer(params={"lr": 2e-3}))

        out.append({"commands": size, "submit_us": timed(submit, few),
                    "poll_us": timed(lambda last=last: c.pull(last), repeats),
                    "newest50_us": timed(lambda: c.commands(limit=50, newest_first=True), few),
                    "dashboard_us": timed(_dashboard(c), few)})
        n = c.next_seq - 1
    bar.close()
    c.close()
    return out


def grow_metric_keys(tmp: Path, repeats: int) -> list[dict[str, Any]]:
    out = []
    for keys in (10, 100, 1_000):
        c = _controller(tmp, f"keys{keys}")
        names = DASH_KEYS + [f"module/{i}/grad_norm" for i in range(keys - len(DASH_KEYS))]
        for s in range(200):
            c.trainer_progress(Progress(branch="main", status=_status(s), rows=[(s, 1.0, dict.fromkeys(names, 0.5))]))
        steps = itertools.count(200)

        def report(c: Controller = c, names: list[str] = names, steps: Iterator[int] = steps) -> None:
            s = next(steps)
            c.trainer_progress(Progress(branch="main", status=_status(s), rows=[(s, 1.0, dict.fromkeys(names, 0.5))]))

        few = max(10, repeats // 10)
        out.append({"metric_keys": keys, "report_us": timed(report, few), "dashboard_us": timed(_dashboard(c), few),
                    "key_list_us": timed(c.metric_keys, few)})
        c.close()
    return out


def grow(dim: str, tmp: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One dimension's rows of figures."""
    if dim in ("rows", "rows_capped"):
        return grow_rows(tmp, args.max_rows, args.repeats, 1024.0 if dim == "rows" else 4.0)
    if dim == "commands":
        return grow_commands(tmp, args.repeats, args.max_commands)
    return {"sources": grow_sources, "checkpoints": grow_checkpoints, "branches": grow_branches,
            "metric_keys": grow_metric_keys}[dim](tmp, args.repeats)


def _ratio_table(rows: list[list[dict[str, Any]]], dim: str, cols: list[str]) -> str:
    """Markdown: per size, each column's range over the passes and its ratio to the smallest size."""
    head = f"| {dim} | " + " | ".join(f"{c} (µs)" for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    first = [r[0] for r in rows]
    for i in range(len(rows[0])):
        cells = [f"{rows[0][i][dim]:,}"]
        for col in cols:
            vals = [p[i][col] for p in rows]
            base = [f[col] for f in first]
            ratios = [v / b for v, b in zip(vals, base, strict=True) if b > 0]
            rng = f"{min(vals):,.0f}" if len(vals) == 1 else f"{min(vals):,.0f}-{max(vals):,.0f}"
            cells.append(f"{rng} ({min(ratios):.1f}-{max(ratios):.1f}x)" if i else rng)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("rows", "rows", ["draw_uniform_us", "draw_fresh_us", "ingest_us", "take_floor_us"]),
              ("rows_capped", "rows", ["draw_uniform_us", "draw_fresh_us", "ingest_us", "take_floor_us"]),
              ("sources", "sources", ["draw_uniform_us", "ingest_us", "stats_us"]),
              ("checkpoints", "checkpoints", ["save_us", "page_us", "status_us", "dashboard_us"]),
              ("branches", "branches", ["status_us", "dashboard_us"]),
              ("commands", "commands", ["submit_us", "poll_us", "newest50_us", "dashboard_us"]),
              ("metric_keys", "metric_keys", ["report_us", "dashboard_us", "key_list_us"])]
    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5))
    for ax, (name, dim, cols) in zip(axes.flat, panels, strict=False):
        last = result["passes"][-1][name]
        for col in cols:
            ax.plot([r[dim] for r in last], [r[col] for r in last], marker="o", label=col.removesuffix("_us"))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel(dim.replace("_", " "))
        ax.set_ylabel("µs (median)")
        ax.legend(fontsize=7)
    axes.flat[-1].axis("off")
    fig.suptitle(f"What an operation costs as the run grows (last pass, {result['machine']['commit']})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-rows", type=int, default=1_000_000)
    ap.add_argument("--max-commands", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--dims", nargs="+", default=list(DIMS), choices=list(DIMS), help="what grows (default: all)")
    ap.add_argument("--no-save", action="store_true", help="print, do not write RESULTS.md (always with --dims)")
    args = ap.parse_args()
    if args.max_rows < 1_000 or args.repeats < 10 or args.passes < 1 or args.max_commands < 100:
        ap.error("--max-rows >= 1000, --max-commands >= 100, --repeats >= 10, --passes >= 1")
    info = machine()
    passes = []
    for p in range(args.passes):
        tmp = Path(tempfile.mkdtemp(prefix="bench-growth-"))
        try:
            print(f"pass {p + 1}/{args.passes}", flush=True)
            passes.append({name: grow(name, tmp, args) for name in DIMS if name in args.dims})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {"machine": info, "args": vars(args), "passes": passes}

    def table(name: str, dim: str, cols: list[str]) -> str:
        return _ratio_table([p[name] for p in passes], dim, cols) if name in passes[0] else "(not measured)"

    md = f"""## Growth (`bench_growth.py`)

{info['date']}, commit {info['commit']}, {info['cpus']} CPUs, load {info['loadavg_1m_at_start']} (1 min) before the
run, {args.passes} passes. Median µs of one operation, the range over the passes; in brackets its
ratio to the smallest size. In-process (the actors' logic; Ray's transport per call is the same at
every size and is not counted). Plot: `results/growth.png`.

**Rows of one live source** (default memory cap: all rows in memory; 64-row ingests, fsync'ed):
{table("rows", "rows", ["draw_uniform_us", "draw_fresh_us", "ingest_us", "take_floor_us"])}

**The same with a 4 MB memory cap** (older rows served from the memory-mapped segments):
{table("rows_capped", "rows", ["draw_uniform_us", "draw_fresh_us", "ingest_us", "take_floor_us"])}

**Sources** (1k rows each, equal weights):
{table("sources", "sources", ["draw_uniform_us", "ingest_us", "stats_us"])}

**Checkpoints listed** (every 10th tagged):
{table("checkpoints", "checkpoints", ["save_us", "page_us", "status_us", "dashboard_us"])}

**Branches** (50 metric rows each):
{table("branches", "branches", ["status_us", "dashboard_us"])}

**Logged commands:**
{table("commands", "commands", ["submit_us", "poll_us", "newest50_us", "dashboard_us"])}

**Metric keys per row** (200 rows):
{table("metric_keys", "metric_keys", ["report_us", "dashboard_us", "key_list_us"])}
"""
    if args.no_save or set(args.dims) != set(DIMS):
        print(md)
        return
    save("growth", result, md)
    plot(result, HERE / "results" / "growth.png")


if __name__ == "__main__":
    main()
