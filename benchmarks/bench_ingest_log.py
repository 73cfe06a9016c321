"""Interaction-sized ingest through Ray: one call per table against the coalescing ingest
log, against the disk's raw rate, in the same run.

A deployed model logs each user's interaction as a small table (``--rows`` rows of
``--row-bytes`` each). Ways, alternating in rounds so that machine noise falls on all:

* ``raw_bulk``: the disk's rate for these rows: their Arrow IPC bytes written in 1 MB
  pieces, fsync after each (what any durable logger pays at least; the target's baseline);
* ``raw_small``: write + fsync per interaction-sized table (a logger that does not batch);
* ``call``: ``client.ingest`` per table, one call at a time (each call a Ray round trip and
  an fsync);
* ``log``: ``client.ingest_log()``: ``add`` per table from one client, rows acknowledged
  when durable (counted once the log is flushed);
* ``log_x8``: 8 client processes (Ray actors), each with its own ingest log, at once.

Targets (issue 24): ``log`` >= 0.5 x ``raw_bulk``; ``log_x8`` >= 0.8 x ``raw_bulk``.

    python benchmarks/bench_ingest_log.py [--rounds 3] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow as pa  # noqa: E402
import ray  # noqa: E402
from _common import machine, median, save  # noqa: E402
from bench_ingest import ipc_bytes, make_tables, run_raw  # noqa: E402

from ray_interactive.core.config import RunConfig, TaskSpec  # noqa: E402
from ray_interactive.runtime.client import connect  # noqa: E402
from ray_interactive.runtime.launch import start_run  # noqa: E402

WAYS = ("raw_bulk", "raw_small", "call", "log", "log_x8")


def run_call(client: Any, tables: list[pa.Table], seconds: float) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        client.ingest(tables[n % len(tables)], "live")
        n += 1
    return n, time.perf_counter() - t0


def run_log(client: Any, tables: list[pa.Table], seconds: float, max_delay_s: float) -> tuple[int, float]:
    """Tables added as fast as the log takes them (it pushes back past its pending bound);
    the time runs until every added row is acknowledged."""
    log = client.ingest_log(max_delay_s=max_delay_s)
    n, t0 = 0, time.perf_counter()
    last = None
    while time.perf_counter() - t0 < seconds:
        last = log.add(tables[n % len(tables)], "live")
        n += 1
    assert log.flush(timeout=120), "rows still pending"
    dt = time.perf_counter() - t0
    if last is not None:
        last.result()  # raises if the rows were refused
    log.close()
    return n, dt


@ray.remote(num_cpus=0)
class Producer:
    """One client process of ``log_x8``: its own connection and ingest log."""

    def __init__(self, run: str, row_bytes: int, rows: int) -> None:
        self.client = connect(run, quiet=True)
        self.tables = make_tables(row_bytes, rows, 16)

    def ready(self) -> bool:
        return True

    def go(self, seconds: float, max_delay_s: float, start_at: float) -> tuple[int, float, float]:
        time.sleep(max(0.0, start_at - time.time()))  # all start together
        t0 = time.time()
        n, _ = run_log(self.client, self.tables, seconds, max_delay_s)
        return n, t0, time.time()


def run_many(producers: list[Any], seconds: float, max_delay_s: float) -> tuple[int, float]:
    start_at = time.time() + 0.5
    out = ray.get([p.go.remote(seconds, max_delay_s, start_at) for p in producers])
    return sum(n for n, _, _ in out), max(e for _, _, e in out) - min(s for _, s, _ in out)


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-log-"))
    try:
        measure(tmp)
    finally:  # gigabytes of raw files and segments (a 2 s pass writes ~1 GB)
        shutil.rmtree(tmp, ignore_errors=True)


def measure(tmp: Path) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0, help="per way and round")
    ap.add_argument("--max-delay-ms", type=float, default=5.0, help="the ingest log's max_delay_s, in ms")
    args = ap.parse_args()
    cases = {"1KB x 16": (1024, 16), "1KB x 1": (1024, 1), "40KB x 1": (40 * 1024, 1)}
    config = RunConfig(
        name="bench-ingest-log",
        task=TaskSpec(target="ray_interactive.examples.ingest_sink:IngestSinkTask"),
        run_dir=tmp / "run",
        torch_threads=1,
        start_paused=True,  # the data path alone; the step loop idles
    )
    m = machine()  # the load before anything of ours runs
    handle = start_run(config)
    client = handle.client()
    delay = args.max_delay_ms / 1000
    results: dict[str, Any] = {}
    for case, (row_bytes, rows) in cases.items():
        tables = make_tables(row_bytes, rows, 16)
        small = [ipc_bytes(t) for t in tables]
        bulk_rows = max(1, 2**20 // row_bytes)
        bulk = [ipc_bytes(t) for t in make_tables(row_bytes, bulk_rows, 4)]
        producers = [Producer.remote(config.name, row_bytes, rows) for _ in range(8)]
        ray.get([p.ready.remote() for p in producers])  # their start-up must not fall on the other ways
        run_log(client, tables, 0.5, delay)  # warm-up
        per: dict[str, list[float]] = {w: [] for w in WAYS}  # rows/s
        for r in range(args.rounds):
            n, dt = run_raw(bulk, tmp / f"bulk-{r}.bin", args.seconds)
            per["raw_bulk"].append(n * bulk_rows / dt)
            n, dt = run_raw(small, tmp / f"small-{r}.bin", args.seconds)
            per["raw_small"].append(n * rows / dt)
            n, dt = run_call(client, tables, args.seconds)
            per["call"].append(n * rows / dt)
            n, dt = run_log(client, tables, args.seconds, delay)
            per["log"].append(n * rows / dt)
            n, dt = run_many(producers, args.seconds, delay)
            per["log_x8"].append(n * rows / dt)
            print(f"{case} round {r}: " + ", ".join(f"{w} {v[-1]:,.0f} rows/s" for w, v in per.items()), flush=True)
        for p in producers:
            ray.kill(p)
        bulk_rate = median(per["raw_bulk"])
        results[case] = {
            "row_bytes": row_bytes,
            "rows_per_add": rows,
            **{w: {"rows_per_s": median(v), "ratio_to_raw_bulk": median(v) / bulk_rate,
                   "range_ratio": [min(v) / bulk_rate, max(v) / bulk_rate], "per_round_rows_per_s": v}
               for w, v in per.items()},
        }
    handle.shutdown()

    result = {"machine": m, "args": vars(args), "cases": results}
    lines = [
        "## Interaction-sized ingest through Ray: the coalescing ingest log (`bench_ingest_log.py`)",
        "",
        f"{args.rounds} alternating rounds of {args.seconds:g} s per way; medians, and in brackets the range over rounds",
        "as a ratio to `raw_bulk` (the same rows' Arrow IPC bytes written in 1 MB pieces, fsync after each: the disk's",
        "rate). `raw_small`: write + fsync per interaction-sized table. `call`: `client.ingest` per table. `log`:",
        f"`client.ingest_log(max_delay_s={delay:g})`, `add` per table from one client, until every row is acknowledged",
        "(durable). `log_x8`: 8 client processes, each its own ingest log, at once. Targets: `log` >= 0.5x,",
        "`log_x8` >= 0.8x `raw_bulk`.",
        "",
        "| row size x rows per add | raw_bulk rows/s | raw_small | call | log | log_x8 |",
        "|---|---|---|---|---|---|",
    ]
    for case, r in results.items():
        cells = [f"{r['raw_bulk']['rows_per_s']:,.0f}"]
        for w in WAYS[1:]:
            lo, hi = r[w]["range_ratio"]
            cells.append(f"{r[w]['rows_per_s']:,.0f} = {r[w]['ratio_to_raw_bulk']:.2f}x ({lo:.2f}-{hi:.2f})")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    lines += ["", f"Measured {m['date']} at commit {m['commit']} on {m['cpus']} CPUs, load {m['loadavg_1m_at_start']} "
              "before the run. On 2 cores the 8 producers, the buffer actor and Ray's own processes share the CPU: "
              "`log_x8` measures the machine more than the log."]
    save("ingest_log", result, "\n".join(lines))


if __name__ == "__main__":
    main()
