"""Durable ingest throughput against the raw disk, in the same run.

For small rows (1 KB) and large ones (40 KB, like a screen-frame transition), a client
sends tables of ``--rows-small`` / ``--rows-large`` rows to a live source. Each is checked
against the schema, appended to an Arrow IPC segment and fsync'ed before it is
acknowledged. Three ways are timed, each over the same tables:

* ``raw``: the same Arrow IPC bytes written to a file with ``write`` + ``fsync`` per table
  (what any durable logger has to pay at least);
* ``buffer``: ``DataBuffer.ingest`` in this process (schema check, segment, fsync);
* ``actor``: ``client.ingest`` to the buffer actor of a running run (the real path: table
  by value through Ray, the actor's ingest, the acknowledgement back), one call at a time;
* ``actor_x8``: the same from 8 client threads at once, as a deployed app serving many
  users would; concurrent ingests share an fsync (group commit);
* ``ray_noop``: the same tables sent one at a time to an actor method that does nothing:
  what Ray's transport alone costs per call on this machine (the floor under ``actor``).

Each case is a row size and a number of rows per table (64 KB and 1 MB tables of 1 KB
rows; 320 KB and 1.3 MB tables of 40 KB rows).

The three alternate in rounds so that disk and machine noise falls on all of them; we
report per-round medians and the ratio to ``raw`` (target: >= 0.5).

    python benchmarks/bench_ingest.py [--rounds 5] [--seconds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import ray  # noqa: E402
from _common import machine, median, save  # noqa: E402

from ray_interactive.core.config import RunConfig, TaskSpec  # noqa: E402
from ray_interactive.core.task import DataSource  # noqa: E402
from ray_interactive.data.buffer import DataBuffer  # noqa: E402
from ray_interactive.examples.ingest_sink import EVENT_SCHEMA  # noqa: E402
from ray_interactive.runtime.launch import start_run  # noqa: E402

SCHEMA = EVENT_SCHEMA


def make_tables(row_bytes: int, rows: int, count: int) -> list[pa.Table]:
    rng = np.random.default_rng(0)
    blob = rng.integers(0, 256, row_bytes - 16, dtype=np.uint8).tobytes()
    return [
        pa.table({"id": np.arange(i * rows, (i + 1) * rows), "t": np.full(rows, 1.0), "payload": [blob] * rows}, schema=SCHEMA)
        for i in range(count)
    ]


def ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def run_raw(blobs: list[bytes], path: Path, seconds: float) -> tuple[int, float]:
    n, t0 = 0, time.perf_counter()
    with open(path, "wb") as f:
        while time.perf_counter() - t0 < seconds:
            f.write(blobs[n % len(blobs)])
            f.flush()
            os.fsync(f.fileno())
            n += 1
    return n, time.perf_counter() - t0


def run_buffer(tables: list[pa.Table], path: Path, seconds: float) -> tuple[int, float]:
    buf = DataBuffer([DataSource("live", schema=SCHEMA)], directory=path)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        buf.ingest(tables[n % len(tables)], "live")
        n += 1
    dt = time.perf_counter() - t0
    buf.close()
    return n, dt


def run_actor(client: object, tables: list[pa.Table], seconds: float, threads: int = 1) -> tuple[int, float]:
    counts = [0] * threads
    t0 = time.perf_counter()

    def loop(k: int) -> None:
        while time.perf_counter() - t0 < seconds:
            client.ingest(tables[(counts[k] * threads + k) % len(tables)], "live")  # type: ignore[attr-defined]
            counts[k] += 1

    workers = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts), time.perf_counter() - t0


@ray.remote(num_cpus=0)
class Sink:
    async def ingest(self, table: pa.Table, source: str) -> dict:
        return {"rows": table.num_rows}


class _NoopClient:
    def __init__(self, sink: object) -> None:
        self.sink = sink

    def ingest(self, table: pa.Table, source: str) -> dict:
        return ray.get(self.sink.ingest.remote(table, source))  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.5, help="per way and round")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))

    cases = {
        "1KB x 64": (1024, 64),
        "1KB x 1024": (1024, 1024),
        "40KB x 8": (40 * 1024, 8),
        "40KB x 32": (40 * 1024, 32),
    }
    # The run's live source must accept these tables: a task whose live source has SCHEMA.
    config = RunConfig(
        name="bench-ingest",
        task=TaskSpec(target="ray_interactive.examples.ingest_sink:IngestSinkTask"),
        run_dir=tmp / "run",
        torch_threads=1,
        start_paused=True,  # measure the data path alone; the step loop idles
    )
    handle = start_run(config)
    client = handle.client()
    noop = _NoopClient(Sink.remote())
    results: dict[str, dict] = {}
    for case, (row_bytes, rows) in cases.items():
        tables = make_tables(row_bytes, rows, 16)
        blobs = [ipc_bytes(t) for t in tables]
        table_bytes = sum(len(b) for b in blobs) / len(blobs)
        per: dict[str, list[float]] = {"raw": [], "buffer": [], "actor": [], "actor_x8": [], "ray_noop": []}
        for r in range(args.rounds):
            n, dt = run_raw(blobs, tmp / f"raw-{case}-{r}.bin", args.seconds)
            per["raw"].append(n / dt)
            n, dt = run_buffer(tables, tmp / f"buf-{case}-{r}", args.seconds)
            per["buffer"].append(n / dt)
            n, dt = run_actor(client, tables, args.seconds)
            per["actor"].append(n / dt)
            n, dt = run_actor(client, tables, args.seconds, threads=8)
            per["actor_x8"].append(n / dt)
            n, dt = run_actor(noop, tables, args.seconds)
            per["ray_noop"].append(n / dt)
            print(f"{case} round {r}: " + ", ".join(f"{k} {v[-1]:.0f} tables/s" for k, v in per.items()), flush=True)
        raw = median(per["raw"])
        results[case] = {
            "row_bytes": row_bytes,
            "rows_per_table": rows,
            "table_bytes": table_bytes,
            **{
                way: {
                    "tables_per_s": median(v),
                    "rows_per_s": median(v) * rows,
                    "mb_per_s": median(v) * table_bytes / 2**20,
                    "ratio_to_raw": median(v) / raw,
                    "per_round_tables_per_s": v,
                }
                for way, v in per.items()
            },
        }
    handle.shutdown()

    result = {"machine": machine(), "args": vars(args), "cases": results}
    lines = [
        "## Durable ingest throughput (`bench_ingest.py`)",
        "",
        f"{args.rounds} alternating rounds of {args.seconds:g} s per way; medians. Every table is fsync'ed before it is",
        "acknowledged. `raw`: the same Arrow IPC bytes, write + fsync per table. `buffer`: `DataBuffer.ingest` in",
        "process. `actor`: `client.ingest` to a run's buffer actor, one call at a time; `actor_x8`: 8 client threads",
        "(group commit). `ray_noop`: the same tables to an actor method that does nothing (Ray's transport alone).",
        "Target: >= 0.5 x raw.",
        "",
        "| rows x rows/table | raw rows/s (MB/s) | buffer | actor | actor_x8 | ray_noop |",
        "|---|---|---|---|---|---|",
    ]
    for case, r in results.items():
        cells = [f"{r['raw']['rows_per_s']:,.0f} ({r['raw']['mb_per_s']:.0f})"]
        for way in ("buffer", "actor", "actor_x8", "ray_noop"):
            w = r[way]
            cells.append(f"{w['rows_per_s']:,.0f} ({w['mb_per_s']:.0f}) = {w['ratio_to_raw']:.2f}x")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    m = result["machine"]
    lines += ["", f"Measured {m['date']} on {m['cpus']} CPUs, load {m['loadavg_1m_at_start']} at start."]
    save("ingest", result, "\n".join(lines))
    shutil.rmtree(tmp, ignore_errors=True)  # gigabytes of raw files and segments


if __name__ == "__main__":
    main()
