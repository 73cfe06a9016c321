"""How the shipped NeuralOS base was chosen and made on a GPU: three recipes trained side by side.

    python studies/neuralos_pretrain_gpu.py --out DIR --seconds 400

Each recipe is one ``python -m neuralos_example.pretrain`` command (printed, and stored in its
checkpoint's ``meta.command``); the three run at once on one GPU. A short probe (150 steps) first
measures each one's speed with the others running, and each gets the step count that fills
``--seconds``, so the schedule is exact (cosine to the last step) and the command, without
``--device cuda --amp bf16``, reproduces the model on a CPU, only slower.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

COMMON = ["--lr", "1e-3", "--warmup", "500", "--frequent-p", "0.005", "--seed", "0"]
RECIPES = {
    "p2_self": ["--patch", "2", "--channels", "32,64,128,128", "--self-rollout", "0.5"],
    "p2_plain": ["--patch", "2", "--channels", "32,64,128,128", "--self-rollout", "0"],
    "p4_self": ["--patch", "4", "--channels", "64,128,128", "--self-rollout", "0.5"],
}


BATCH = 128


def launch(name: str, steps: int, batch: int, out: Path, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "neuralos_example.pretrain", "--steps", str(steps), "--batch", str(batch), *COMMON, *RECIPES[name], *extra, "--out", str(out / name)]
    print(" ".join(cmd[1:]), flush=True)
    return subprocess.Popen(cmd, stdout=open(out / f"{name}.log", "w"), stderr=subprocess.STDOUT)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=400)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--probe-steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=BATCH)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    dev = ["--device", a.device, "--amp", "bf16" if a.device == "cuda" else "none"]
    probe_dir = a.out / "probe"
    probe_dir.mkdir(exist_ok=True)
    t0 = time.time()
    procs = {n: launch(n, a.probe_steps, a.batch, probe_dir, [*dev, "--eval-every", "100000", "--save-every", "100000"]) for n in RECIPES}
    for p in procs.values():
        p.wait()
    rates = {}
    for n in RECIPES:
        text = (probe_dir / f"{n}.log").read_text()
        m = re.findall(r"\(([0-9.]+) training steps/s\)", text)
        rates[n] = float(m[-1]) if m else 0.0
        print(n, f"{rates[n]:.1f} steps/s in the probe", flush=True)
    print(f"probe took {time.time() - t0:.0f} s", flush=True)
    procs = {}
    for n, r in rates.items():
        steps = max(500, int(r * a.seconds * 0.92) // 250 * 250)  # start-up and the evaluations take the rest
        procs[n] = launch(n, steps, a.batch, a.out, [*dev, "--eval-every", str(steps // 4), "--save-every", str(steps // 4)])
    for p in procs.values():
        p.wait()
    print(f"all done in {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
