"""The NeuralOS loop: demo frame latency, interaction -> transition ingested, training speed.

1. **Frame latency** of the demo model (the shipped base, default size) for each DDIM setting,
   one torch thread as the demo runs it: p50/p95 over ``--frames`` autoregressive frames; and
   ``--sessions`` users acting at once, their frames sampled one at a time vs batched.
2. **The loop**: a run (trainer finetuning, batch 8) + the deployment (demo, interaction log,
   replayer, ``--users`` simulated users over HTTP) for ``--seconds``. Reported: seconds from an
   action reaching the demo to its replayed transition acknowledged by the buffer (p50/p95),
   training steps/s during the loop, and, measured in the same process before the loop, steps/s
   of a bare PyTorch loop (same model, loss, batch size, one thread, batches prepared in
   advance): the ratio says what the trainer gets of a core while the demo and users share the
   machine.

    python benchmarks/bench_neuralos.py [--seconds 60] [--users 2] [--frames 30]
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import machine, median, percentile, save  # noqa: E402

from neuralos_example.data import base_table, task_session  # noqa: E402
from neuralos_example.model import BASE_CHECKPOINT, SAMPLER_STEPS, FramePredictor, load_model  # noqa: E402
from neuralos_example.simulator import Desktop  # noqa: E402
from neuralos_example.task import NeuralOSTask  # noqa: E402


def frame_latency(frames: int) -> dict[int, dict[str, float]]:
    model = load_model(BASE_CHECKPOINT).eval()
    session = task_session("create_folder", 3)
    out = {}
    for steps in SAMPLER_STEPS:
        pred = FramePredictor(model, steps)
        frame = Desktop(64, session.seed).render()
        pred.predict(frame, session.actions[0])  # warm-up
        times = []
        for i in range(frames):
            a = session.actions[i % len(session.actions)]
            t0 = time.perf_counter()
            frame = pred.predict(frame, a)
            times.append((time.perf_counter() - t0) * 1000)
        out[steps] = {"p50_ms": median(times), "p95_ms": percentile(times, 0.95), "fps": 1000 / median(times)}
        print(f"  {steps:2d} DDIM steps: p50 {out[steps]['p50_ms']:.0f} ms, p95 {out[steps]['p95_ms']:.0f} ms", flush=True)
    return out


def concurrent_sessions(sessions: int, actions: int, rounds: int = 3) -> dict[str, dict[str, float]]:
    """``sessions`` users acting at once through one :class:`DemoEngine` (4-step DDIM), frames
    sampled one at a time (``max_batch=1``, the engine before batching) vs together; alternating
    rounds, medians over rounds of frames/s for the whole demo and of each action's latency."""
    import threading

    from neuralos_example.engine import DemoEngine

    model = load_model(BASE_CHECKPOINT).eval()
    session = task_session("open_browser", 5)
    out: dict[str, dict[str, list[float]]] = {k: {"fps": [], "mean_ms": [], "p50_ms": [], "p95_ms": []} for k in ("one_at_a_time", "batched")}
    sizes: collections.Counter[int] = collections.Counter()
    for _ in range(rounds):
        for name, max_batch in (("one_at_a_time", 1), ("batched", 8)):
            engine = DemoEngine(model, steps=4, max_batch=max_batch)
            ids = [engine.new_session(seed=i).id for i in range(sessions)]
            engine.act(ids[0], 1, 1, "move")  # warm-up
            start = threading.Barrier(sessions + 1)

            def user(sid: str, engine: DemoEngine = engine, start: threading.Barrier = start) -> None:
                start.wait()
                for i in range(actions):
                    a = session.actions[i % len(session.actions)]
                    engine.act(sid, a.x, a.y, a.event.name, None)

            threads = [threading.Thread(target=user, args=(sid,)) for sid in ids]
            for t in threads:
                t.start()
            start.wait()
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - t0
            engine.close()
            lat = list(engine.latencies_ms)[1:]
            out[name]["fps"].append(sessions * actions / elapsed)
            if max_batch > 1:
                sizes.update(engine.batch_sizes)
            out[name]["mean_ms"].append(sum(lat) / len(lat))
            out[name]["p50_ms"].append(median(lat))
            out[name]["p95_ms"].append(percentile(lat, 0.95))
    res: dict[str, Any] = {k: {m: median(v) for m, v in d.items()} for k, d in out.items()}
    res["batched"]["batch_sizes"] = {str(k): v for k, v in sorted(sizes.items())}
    for k, r in res.items():
        print(f"  {sessions} sessions at once, {k}: {r['fps']:.1f} frames/s; action latency mean {r['mean_ms']:.0f} ms, "
              f"p50 {r['p50_ms']:.0f} ms, p95 {r['p95_ms']:.0f} ms", flush=True)
    return res


def bare_steps_per_s(batch: int, steps: int = 30) -> float:
    """The same model, loss and batch size in a plain PyTorch loop (batches collated up front)."""
    task = NeuralOSTask(checkpoint=str(BASE_CHECKPOINT))
    model = task.build_model().train()
    opt = task.build_optimizer(model, 2e-4)
    rows = base_table(batch * steps, 0)
    batches = [task.collate(rows.slice(i * batch, batch), torch.device("cpu")) for i in range(steps)]
    times = []
    for b in batches:
        t0 = time.perf_counter()
        loss, _ = task.loss(model, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    return 1.0 / median(times[3:])


def loop(seconds: float, users: int, batch: int) -> dict[str, float]:
    from neuralos_example.main import Deployment
    from ray_interactive.core.config import RunConfig, TaskSpec
    from ray_interactive.runtime.launch import start_run

    tmp = Path(tempfile.mkdtemp(prefix="bench-neuralos-"))
    config = RunConfig(
        name=f"bench-neuralos-{os.getpid()}", run_dir=tmp / "run", batch_size=batch, lr=2e-4, publish_every=20, torch_threads=1,
        task=TaskSpec(target="neuralos_example.task:NeuralOSTask", kwargs={"checkpoint": str(BASE_CHECKPOINT)}),
    )
    handle = start_run(config)
    client = handle.client()
    d = Deployment(client, config.resolved_run_dir, users=users)
    time.sleep(5)  # users connect, first frames
    s0, t0 = client.status()["step"], time.monotonic()
    time.sleep(seconds)
    s1, t1 = client.status()["step"], time.monotonic()
    d.close()
    lat = list(d.replayer.latencies_s)
    transitions = d.replayer.transitions
    versions = d.engine.version
    handle.shutdown()
    return {
        "steps_per_s": (s1 - s0) / (t1 - t0),
        "interaction_to_ingested_p50_s": median(lat) if lat else float("nan"),
        "interaction_to_ingested_p95_s": percentile(lat, 0.95),
        "transitions": transitions,
        "demo_frames": len(d.engine.latencies_ms),
        "demo_frame_p50_ms_in_loop": median(list(d.engine.latencies_ms)) if d.engine.latencies_ms else float("nan"),
        "last_version_served": versions,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--users", type=int, default=2)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sessions", type=int, default=4, help="concurrent demo sessions for the batching measurement")
    args = ap.parse_args()
    torch.set_num_threads(1)
    m = machine()
    print("frame latency (1 thread):", flush=True)
    frames = frame_latency(args.frames)
    print("concurrent sessions (4-step DDIM, 1 thread):", flush=True)
    conc = concurrent_sessions(args.sessions, args.frames)
    bare = bare_steps_per_s(args.batch)
    print(f"bare PyTorch loop: {bare:.2f} steps/s (batch {args.batch}, 1 thread)", flush=True)
    lp = loop(args.seconds, args.users, args.batch)
    result = {"machine": m, "args": vars(args), "frame_latency": frames, "concurrent_sessions": conc, "bare_steps_per_s": bare, "loop": lp}
    rows = "\n".join(f"| {s} | {v['p50_ms']:.0f} | {v['p95_ms']:.0f} | {v['fps']:.1f} |" for s, v in frames.items())
    md = f"""## NeuralOS loop (`bench_neuralos.py`)

{m['cpus']} CPUs, load {m['loadavg_1m_at_start']} at start, {m['date']}. Shipped base model, 64x64, one torch thread.

| DDIM steps | frame p50 (ms) | frame p95 (ms) | frames/s |
|---|---|---|---|
{rows}

{args.sessions} sessions acting at once (4-step DDIM, {args.frames} actions each, median of 3 alternating rounds):

| frames sampled | demo frames/s | action latency mean / p50 / p95 (ms) |
|---|---|---|
| one at a time (a lock; whoever gets it) | {conc['one_at_a_time']['fps']:.1f} | {conc['one_at_a_time']['mean_ms']:.0f} / {conc['one_at_a_time']['p50_ms']:.0f} / {conc['one_at_a_time']['p95_ms']:.0f} |
| together (the engine's batching) | {conc['batched']['fps']:.1f} ({conc['batched']['fps'] / conc['one_at_a_time']['fps']:.2f}x) | {conc['batched']['mean_ms']:.0f} / {conc['batched']['p50_ms']:.0f} / {conc['batched']['p95_ms']:.0f} |

Batches sampled (size: count, all rounds): {', '.join(f"{k}: {v}" for k, v in conc['batched']['batch_sizes'].items())}.

Loop for {args.seconds:.0f} s with {args.users} simulated users (trainer batch {args.batch}):

- interaction -> replayed transition acknowledged by the buffer: p50 {lp['interaction_to_ingested_p50_s']:.2f} s, p95 {lp['interaction_to_ingested_p95_s']:.2f} s ({lp['transitions']} transitions)
- training: {lp['steps_per_s']:.2f} steps/s during the loop vs {bare:.2f} steps/s bare PyTorch alone on the machine (ratio {lp['steps_per_s'] / bare:.2f}); the demo drew {lp['demo_frames']} frames meanwhile (p50 {lp['demo_frame_p50_ms_in_loop']:.0f} ms) and was serving weights version {lp['last_version_served']} at the end
"""
    save("neuralos", result, md)


if __name__ == "__main__":
    main()
