"""The README's main command, `make demo`, with a short duration and one simulated user.

In a module of its own so that the loop tests' run is gone before it starts a second Ray cluster,
trainer and demo on the same two cores."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_main_command_runs_the_loop_and_ends_cleanly(tmp_path: Path) -> None:
    """`make demo` (the README's main command) with a short duration and one simulated user."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        ["make", "demo", "DURATION=25", f"DEMO_ARGS=--run-dir {tmp_path / 'run'} --users 1"],
        cwd=REPO, capture_output=True, text=True, timeout=400, env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "control UI: http://" in text and "NeuralOS demo: http://" in text
    assert "stopped at step" in text
    # the summary says what the base could do and what the run made of it, per task
    assert "evaluation, first -> last" in text, text[-3000:]
    assert "create_folder: " in text and "open_trash: " in text and "frequent: success " in text
    assert "loss: first" not in text
    # make demo serves the model from 2 Ray Serve replicas: each says the version it served last
    # and a guarded rollout: "<replica> v2, <replica> v3 (stable v2, canary v3)"
    served_text = text.split("demo: served model versions ")[1].split(";")[0]
    versions = [int(v) for v in re.findall(r" v(\d+)", " " + served_text.split(" (")[0])]
    assert len(versions) == 2 and "(stable v" in served_text, served_text
    served = max(versions)
    replayed = int(text.split("interactions logged; ")[1].split(" transitions")[0])
    assert served >= 1 and replayed > 0
    assert (tmp_path / "run" / "buffer" / "live").is_dir()
