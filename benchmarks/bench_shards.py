"""Ingest with one and two buffer shards: 8 client processes logging interaction-sized
tables through their ingest logs, the rows counted when acknowledged (durable on their
shard) and when merged into the primary (what the trainer can draw).

Two runs are up side by side (``buffer_shards`` 1 and 2) and the rounds alternate between
them, with the disk's bulk rate for the same rows measured in each round as the baseline.

    python benchmarks/bench_shards.py [--rounds 3] [--seconds 3]
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

import ray  # noqa: E402
from _common import machine, median, save  # noqa: E402
from bench_ingest import ipc_bytes, make_tables, run_raw  # noqa: E402
from bench_ingest_log import Producer, run_many  # noqa: E402

from ray_interactive.core.config import RunConfig, TaskSpec  # noqa: E402
from ray_interactive.runtime.launch import start_run  # noqa: E402

CLIENTS = 8


def merged_rows(client: Any) -> int:
    return int(client.sources()["live"]["rows"])


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    try:
        measure(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(tmp: Path) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="per way and round")
    ap.add_argument("--row-bytes", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=16, help="rows per add")
    args = ap.parse_args()
    m = machine()  # the load before anything of ours runs
    runs, clients, producers = {}, {}, {}
    for shards in (1, 2):
        config = RunConfig(
            name=f"bench-shards-{shards}",
            task=TaskSpec(target="ray_interactive.examples.ingest_sink:IngestSinkTask"),
            run_dir=tmp / f"run-{shards}",
            torch_threads=1,
            start_paused=True,  # the data path alone
            buffer_shards=shards,
        )
        runs[shards] = start_run(config)
        clients[shards] = runs[shards].client()
        producers[shards] = [Producer.remote(config.name, args.row_bytes, args.rows) for _ in range(CLIENTS)]
        ray.get([p.ready.remote() for p in producers[shards]])
        run_many(producers[shards], 0.5, 0.005)  # warm-up
    bulk_rows = max(1, 2**20 // args.row_bytes)
    bulk = [ipc_bytes(t) for t in make_tables(args.row_bytes, bulk_rows, 4)]
    per: dict[str, list[float]] = {"raw_bulk": [], "acked_1": [], "acked_2": [], "merged_2": [], "lag_2_s": []}
    for r in range(args.rounds):
        n, dt = run_raw(bulk, tmp / f"bulk-{r}.bin", args.seconds)
        per["raw_bulk"].append(n * bulk_rows / dt)
        for shards in (1, 2):
            before = merged_rows(clients[shards])
            n, dt = run_many(producers[shards], args.seconds, 0.005)
            acked_at = time.perf_counter()
            per[f"acked_{shards}"].append(n * args.rows / dt)
            if shards == 2:  # until the primary holds every acknowledged row
                target = before + n * args.rows
                while merged_rows(clients[shards]) < target:
                    time.sleep(0.01)
                done = time.perf_counter()
                per["merged_2"].append(n * args.rows / (dt + done - acked_at))
                per["lag_2_s"].append(done - acked_at)
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:,.2f}" for k, v in per.items()), flush=True)
    for shards in (1, 2):
        for p in producers[shards]:
            ray.kill(p)
        runs[shards].shutdown()

    bulk_rate = median(per["raw_bulk"])
    result: dict[str, Any] = {"machine": m, "args": vars(args), "clients": CLIENTS, "per_round": per}
    for k, v in per.items():
        result[k] = {"median": median(v), "range": [min(v), max(v)]}
    lines = [
        "## Ingest with one and two buffer shards (`bench_shards.py`)",
        "",
        f"{CLIENTS} client processes, each its own ingest log adding {args.rows} rows of {args.row_bytes} B at a time, "
        f"for {args.seconds:g} s; {args.rounds} rounds alternating between a run with one shard and one with two. "
        "`acked`: rows/s acknowledged (durable on their shard). `merged`: rows/s until the primary holds every one "
        "(what the trainer can draw); `lag`: seconds from the last acknowledgement to that. Medians, range over rounds.",
        "",
        "| | rows/s | x raw_bulk |",
        "|---|---|---|",
    ]
    for k in ("raw_bulk", "acked_1", "acked_2", "merged_2"):
        v = per[k]
        lines.append(f"| {k} | {median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f}) | {median(v) / bulk_rate:.2f}x "
                     f"({min(v) / bulk_rate:.2f}-{max(v) / bulk_rate:.2f}) |")
    lag = per["lag_2_s"]
    lines += [
        f"| lag_2 (s) | {median(lag):.2f} ({min(lag):.2f}-{max(lag):.2f}) | |",
        "",
        f"Two shards / one: {median(per['acked_2']) / median(per['acked_1']):.2f}x acknowledged, "
        f"{median(per['merged_2']) / median(per['acked_1']):.2f}x merged.",
        "",
        f"Measured {m['date']} at commit {m['commit']} on {m['cpus']} CPUs, load {m['loadavg_1m_at_start']} before the "
        "run. All shards, the 8 clients and Ray share 2 cores and one disk here, so a second shard adds a process to "
        "feed rather than a machine: on separate nodes each shard brings its own cores and disk.",
    ]
    save("shards", result, "\n".join(lines))


if __name__ == "__main__":
    main()
