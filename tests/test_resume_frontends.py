"""A run steered in the user's own process - a plain loop (``ri.steer``), a Hugging Face
``Trainer`` (``ri.hf.steer``) - whose process is SIGKILLed mid-run: its status shows the step
it reached, ``run --resume`` says how to resume it instead of failing, and the script run
again with ``resume=True`` continues from the newest checkpoint with the losses an
uninterrupted run has (on the CPU, bit for bit)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import ray_interactive as ri
from ray_interactive.runtime.offline import FinishedRun

from .conftest import REPO, SHARED_DATA, wait_until
from .test_cli import cli


def script(kind: str, name: str, run_dir: Path, address: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RAY_ADDRESS": address}
    return subprocess.Popen([sys.executable, "-m", "tests.steered_script", kind, name, str(run_dir), *extra],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes], timeout: float = 240) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()[-3000:]


def losses(run_dir: Path) -> dict[int, float]:
    m = FinishedRun(run_dir).metrics(keys=["loss"], branch="main")["loss"]
    return dict(zip(m["step"], m["value"]))


def step_of(name: str) -> int:
    try:
        return int(ri.connect(name).status()["step"])
    except Exception:  # noqa: BLE001 - not up yet
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["loop", "hf"])
def test_a_killed_loop_of_ones_own_resumes_with_the_uninterrupted_losses(
    kind: str, tmp_path: Path, ray_cluster: dict[str, Any]
) -> None:
    if kind == "hf" and not (SHARED_DATA / "wikitext-2").exists():
        pytest.skip("needs ../shared/data")
    address = ray_cluster["address"]
    whole_dir, dead_dir = tmp_path / "whole", tmp_path / "dead"
    whole = script(kind, f"{kind}-whole-{os.getpid()}", whole_dir, address)
    name = f"{kind}-dead-{os.getpid()}"
    dead = script(kind, name, dead_dir, address)
    try:
        seen = wait_until(lambda: (s := step_of(name)) >= 25 and s, timeout=180, what="the run past two checkpoints")
    finally:
        dead.send_signal(signal.SIGKILL)
        dead.wait(timeout=30)
    finish(whole)

    status = FinishedRun(dead_dir).status()
    assert status["status"] == "ended" and status["step"] >= seen, status  # not an older step
    out = cli("--address", address, "run", "--resume", str(dead_dir))
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    call = "ri.hf.steer(trainer, run=" if kind == "hf" else "ri.steer("
    assert call in out.stderr and "resume=True" in out.stderr, out.stderr

    again = script(kind, name, dead_dir, address)  # the script as it was: refused, saying how to resume
    _, err = again.communicate(timeout=240)
    assert again.returncode != 0 and "already holds a run" in err.decode() and "resume=True" in err.decode()

    finish(script(kind, name, dead_dir, address, "--resume"))
    resumed = FinishedRun(dead_dir)
    assert resumed.status()["status"] == "stopped" and resumed.status()["step"] == 60
    expected = losses(whole_dir)
    assert sorted(expected) == list(range(1, 61))
    assert losses(dead_dir) == expected  # the steps before the checkpoint, and those computed again
    lost = [c for c in resumed.checkpoints() if c["step"] > seen - seen % 10 and c["reason"] == "periodic"]
    assert lost, "the resumed run writes its checkpoints again"
