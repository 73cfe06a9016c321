"""The deployed NeuralOS model on Ray Serve: frames/s and latency under concurrent users,
weight fan-out to every replica, and the canary judge's decision time.

A NeuralOS run is started paused (its trainer idles, so the figures are the serving side's;
``publish_weights`` commands still apply while paused). Then, in the same run:

* **frames**: ``--users`` threads act as users on the demo's engine (sessions in this
  process, as the Gradio front keeps them), each doing one action after another for
  ``--seconds``: with the model in this process (``in-process``: the engine's own batching)
  and on Serve with 1 and 2 replicas (``@serve.batch``); frames/s, p50/p95 per action;
* **fan-out**: with 2 replicas following the newest version, ``--versions`` versions are
  published; for each, the time from the trainer's copy to every replica reporting it
  (replicas report at once after a swap), p50/p95 (Ekko reports 2.4 s to spread a version);
* **canary**: a second run with a guarded rollout and the NeuralOS judge (2 held-out
  sessions per task); the time from a version's publication to the judge's verdict.

    python benchmarks/bench_serve.py [--seconds 20] [--users 8] [--versions 10]
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
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import machine, median, percentile, save  # noqa: E402

import ray_interactive as ri  # noqa: E402
from neuralos_example.engine import DemoEngine, InteractionLog  # noqa: E402
from neuralos_example.evaluation import JUDGE_GUARDS, JudgeEvaluation  # noqa: E402
from neuralos_example.model import BASE_CHECKPOINT, load_model  # noqa: E402
from neuralos_example.serving import NeuralOSModel, ServedFrames  # noqa: E402


def start(name: str, tmp: Path, rollout: bool) -> Any:
    config = ri.RunConfig.model_validate({
        "name": name, "run_dir": tmp / name,
        "task": {"target": "neuralos_example.task:NeuralOSTask", "kwargs": {"base_rows": 64, "sampler_steps": 2}},
        "batch_size": 2, "torch_threads": 1, "start_paused": True, "weights_keep": 16,
        "rollout": {"enabled": rollout, "guards": JUDGE_GUARDS},
    })
    return ri.start_run(config)


def drive(engine: DemoEngine, users: int, seconds: float) -> dict[str, Any]:
    """``users`` threads, one action after another; returns frames/s and latencies (ms)."""
    lat: list[float] = []
    lock = threading.Lock()
    t_end = time.perf_counter() + seconds

    def user(k: int) -> None:
        rng = np.random.default_rng(k)
        sid = engine.new_session(seed=k).id
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            engine.act(sid, int(rng.integers(0, 64)), int(rng.integers(0, 64)), "move" if k % 2 else "left_click", steps=2)
            with lock:
                lat.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=user, args=(k,)) for k in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    return {"frames_per_s": len(lat) / dt, "p50_ms": percentile(lat, 0.5), "p95_ms": percentile(lat, 0.95), "frames": len(lat)}


def fan_out(client: Any, versions: int, replicas: int) -> list[float]:
    """Seconds from each version's copy to every replica reporting it."""
    out = []
    for _ in range(versions):
        rec = client.wait(client.send("publish_weights"), timeout=60)
        v = int(rec.message.split("version ")[1].split()[0])
        entry = None
        while entry is None:  # the trainer hands the version to the controller from a thread
            try:
                entry = client.weight_version(v)
            except ValueError:
                time.sleep(0.01)
        deadline = time.time() + 60
        while time.time() < deadline:
            reps = [r for r in client.replicas() if r["alive"]]
            if len(reps) >= replicas and all(r["version"] >= v for r in reps):
                # each replica's report after its swap carries the time it was sent
                out.append(max(r["time"] for r in reps) - entry.time)
                break
            time.sleep(0.02)
        time.sleep(0.5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--users", type=int, default=8)
    ap.add_argument("--versions", type=int, default=10)
    ap.add_argument("--canaries", type=int, default=4)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    torch.set_num_threads(1)  # as the demo's process does (make demo), and as each replica does
    m = machine()  # the load before anything of ours runs
    handle = start("bench-serve", tmp, rollout=False)
    client = handle.client()
    results: dict[str, Any] = {"frames": {}}

    # in-process: the engine's own batching; it logs its interactions too (through the
    # demo's interaction log), as the replicas do
    sink = InteractionLog(lambda table, bid: client.ingest(table, "interactions", batch_id=bid))
    engine = DemoEngine(load_model(BASE_CHECKPOINT), sink.add, 2)
    results["frames"]["in-process"] = drive(engine, args.users, args.seconds)
    engine.close()
    sink.close()
    print("in-process", results["frames"]["in-process"], flush=True)
    for n in (1, 2):
        app = f"bench-serve-{n}"
        h = ri.deploy(NeuralOSModel.options(num_replicas=n).bind(run="bench-serve", sampler_steps=2), app)
        served = ServedFrames(h, client)
        engine = DemoEngine(load_model(BASE_CHECKPOINT), None, 2, remote=served)
        drive(engine, args.users, 3.0)  # warm-up
        results["frames"][f"serve x{n}"] = drive(engine, args.users, args.seconds)
        print(f"serve x{n}", results["frames"][f"serve x{n}"], flush=True)
        if n == 2:
            fo = fan_out(client, args.versions, 2)
            results["fan_out_s"] = {"p50": median(fo), "p95": percentile(fo, 0.95), "max": max(fo), "per_version": fo}
            print("fan-out", results["fan_out_s"], flush=True)
        ri.undeploy(app)
    handle.shutdown()

    # the canary judge's decision time
    handle = start("bench-canary", tmp, rollout=True)
    client = handle.client()
    app = "bench-canary-model"
    ri.deploy(NeuralOSModel.options(num_replicas=2).bind(run="bench-canary", sampler_steps=2), app)
    judge = ri.CanaryJudge(client, load_model(BASE_CHECKPOINT), JudgeEvaluation(steps=2)).start()
    decisions: list[dict[str, Any]] = []
    for _ in range(args.canaries):
        before = len(client.rollout()["decisions"])
        client.wait(client.send("publish_weights"), timeout=60)
        deadline = time.time() + 120
        while time.time() < deadline and len(client.rollout()["decisions"]) <= before:
            time.sleep(0.1)
        d = client.rollout()["decisions"][-1]
        decisions.append({"version": d["version"], "action": d["action"], "canary_for_s": d["figures"]["canary_for_s"],
                          "judged_in_s": d["figures"]["judged_in_s"]})
        print("canary", decisions[-1], flush=True)
    judge.stop()
    ri.undeploy(app)
    handle.shutdown()
    dec = [d["canary_for_s"] for d in decisions]
    results["canary"] = {"decision_s_p50": median(dec), "decision_s_max": max(dec), "decisions": decisions}

    f = results["frames"]
    base = f["in-process"]["frames_per_s"]
    lines = [
        "## The deployed model on Ray Serve (`bench_serve.py`)",
        "",
        f"NeuralOS (4.2M parameters, 2-step DDIM, one torch thread per process), {args.users} user threads acting one",
        f"action after another for {args.seconds:g} s; the run's trainer idles (paused). Sessions stay in the driver",
        "(as the Gradio front keeps them); a frame goes by value through a Serve handle and back. Every way logs",
        "each interaction (a PNG of the frame) to the run's buffer: in-process through the demo's interaction log,",
        "on Serve through each replica's coalescing ingest log.",
        "",
        "| model served by | frames/s | vs in-process | p50 ms | p95 ms |",
        "|---|---|---|---|---|",
    ]
    for k, r in f.items():
        lines.append(f"| {k} | {r['frames_per_s']:.1f} | {r['frames_per_s'] / base:.2f}x | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} |")
    fo = results["fan_out_s"]
    c = results["canary"]
    lines += [
        "",
        f"Weight fan-out (2 replicas, 4.2M parameters, {len(fo['per_version'])} versions): from the trainer's copy to every "
        f"replica reporting the new version **p50 {fo['p50']:.2f} s, p95 {fo['p95']:.2f} s** (max {fo['max']:.2f}; Ekko: 2.4 s).",
        f"Canary decision (the NeuralOS judge: 4 tasks x 2 held-out sessions, canary and, once, stable): from publication "
        f"to the verdict p50 {c['decision_s_p50']:.1f} s, max {c['decision_s_max']:.1f} s over {len(dec)} versions "
        f"({', '.join(d['action'] for d in decisions)}).",
        "",
        f"Measured {m['date']} at commit {m['commit']} on {m['cpus']} CPUs, load {m['loadavg_1m_at_start']} before the run. "
        "On 2 cores a second replica has no core of its own (the driver's user threads, Serve's controller and the "
        "replicas share them): what it hides is the scaling a replica per core would show.",
    ]
    save("serve", {"machine": m, "args": vars(args), **results}, "\n".join(lines))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
