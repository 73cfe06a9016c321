"""How fast the CLI answers, and how much it prints that nobody asked for.

A run trains in one process (``ray-interactive run``, as a user starts it in one shell);
from another, each of ``status``, ``send``, ``log`` and ``checkpoints`` is timed as a new
process, wall clock from start to exit (what a person waits for), and its stderr lines are
counted (the target is none). Then the run is stopped and ``status`` is timed on its run
directory with no cluster left. Bare ``python -c pass`` and ``python -c "import ray"`` are
measured in the same pass as the floor and as what a Ray client costs before it connects.

    python benchmarks/bench_cli.py [--repeats 10] [--passes 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, median, percentile, save  # noqa: E402

CLI = [sys.executable, "-m", "ray_interactive.cli"]
ROOT = Path(__file__).resolve().parent.parent


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int, int, str]:
    t = time.perf_counter()
    p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - t
    noise = [line for line in p.stderr.splitlines() if line.strip()]
    return wall, p.returncode, len(noise), p.stdout + p.stderr


def wait_for(what: str, check: object, deadline_s: float = 180.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def one_pass(repeats: int, tmp: Path, env: dict[str, str]) -> dict[str, dict[str, float]]:
    name = f"clibench{int(time.time())}"
    run = subprocess.Popen([*CLI, "run", "--example", "regression", "--name", name, "--quiet",
                            "--max-steps", "100000000", "--set", "checkpoint_every=2000"],
                           cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("the run to answer status", lambda: timed([*CLI, "status", name], tmp, env)[1] == 0 and
                 "running" in timed([*CLI, "status", name], tmp, env)[3])
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import ray'": [sys.executable, "-c", "import ray"],
            "status": [*CLI, "status", name],
            "send": [*CLI, "send", name, "update_optimizer", "lr=1e-3"],
            "log": [*CLI, "log", name, "-n", "5"],
            "checkpoints": [*CLI, "checkpoints", name],
        }
        out: dict[str, dict[str, float]] = {}
        for label, argv in cases.items():
            walls, noise = [], []
            for _ in range(repeats):
                wall, rc, lines, text = timed(argv, tmp, env)
                if rc != 0:
                    raise RuntimeError(f"{label} failed ({rc}): {text[-2000:]}")
                walls.append(wall)
                noise.append(lines)
            out[label] = {"p50_s": median(walls), "p90_s": percentile(walls, 0.9), "stderr_lines": median(noise)}
        timed([*CLI, "send", name, "stop"], tmp, env)
        run.wait(timeout=180)
        walls, noise = [], []
        for _ in range(repeats):
            wall, rc, lines, text = timed([*CLI, "status", name], tmp, env)
            if rc != 0:
                raise RuntimeError(f"status of the finished run failed ({rc}): {text[-2000:]}")
            walls.append(wall)
            noise.append(lines)
        out["status (finished run)"] = {"p50_s": median(walls), "p90_s": percentile(walls, 0.9),
                                        "stderr_lines": median(noise)}
        return out
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=10, help="timed calls of each command per pass")
    ap.add_argument("--passes", type=int, default=3)
    a = ap.parse_args()
    meta = machine()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_INTERACTIVE_RUNS": ""}
    env.pop("RAY_ADDRESS", None)
    passes = []
    with tempfile.TemporaryDirectory() as d:
        for i in range(a.passes):
            passes.append(one_pass(a.repeats, Path(d), env))
            print(f"pass {i + 1}/{a.passes}: " + ", ".join(f"{k} {v['p50_s']:.2f}s" for k, v in passes[-1].items()),
                  flush=True)
    rows = []
    for label in passes[0]:
        p50s = [p[label]["p50_s"] for p in passes]
        p90s = [p[label]["p90_s"] for p in passes]
        lines = [p[label]["stderr_lines"] for p in passes]
        rows.append(f"| {label} | {min(p50s):.2f}-{max(p50s):.2f} | {min(p90s):.2f}-{max(p90s):.2f} | "
                    f"{min(lines):g}-{max(lines):g} |")
    md = (
        f"## CLI response time ({meta['date']}, commit {meta['commit']}, {meta['cpus']} CPUs, "
        f"load {meta['loadavg_1m_at_start']} before the run)\n\n"
        f"`python benchmarks/bench_cli.py --repeats {a.repeats} --passes {a.passes}`: each command a new process "
        "from another shell while a `ray-interactive run` trains (the regression example), wall clock to exit; "
        "ranges over passes of the median (p50) and 90th percentile of "
        f"{a.repeats} calls; stderr lines: what it printed beyond the answer.\n\n"
        "| command | p50 s | p90 s | stderr lines |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "Leaves out: a run on a remote cluster (the CLI then attaches through Ray), a first call's cold disk cache."
    )
    save("cli", {"meta": meta, "passes": passes}, md)


if __name__ == "__main__":
    main()
