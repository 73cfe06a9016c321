"""`make demo-chat`, the chat model learning from its users' corrections, with a short
duration, the tiny model and one simulated user (a module of its own: it starts its own Ray
cluster, trainer and chat on the same two cores)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest

import ray_interactive as ri
from ray_interactive.data.segments import recover_source
from ray_interactive.examples.chat_corrections import EXCHANGES, FEEDBACK, exchange_schema, feedback_schema

from .conftest import REPO


@pytest.mark.slow
def test_demo_chat_runs_the_loop_and_ends_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run_dir = tmp_path / "run"
    out = subprocess.run(
        ["make", "demo-chat", "DURATION=45",
         f"DEMO_ARGS=--run-dir {run_dir} --users 1 --model tiny --no-ui --eval-every 20 --publish-every 5"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=env,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "chat: http://" in text and "stopped at step" in text, text[-3000:]
    served = [int(v) for v in re.findall(r"chat serves version (\d+)", text)]
    assert served and max(served) >= 1, text[-3000:]  # the chat followed the adapter versions
    # ... once the judge had promoted them: the guarded rollout is on by default
    rollout = re.search(r"guarded rollout: the chat serves version (\d+); (.*)", text)
    assert rollout and "promoted" in rollout.group(2), text[-3000:]
    decisions = ri.attach(str(run_dir)).rollout()["decisions"]
    assert decisions and all("general_accuracy" in d["figures"]["canary"] for d in decisions)
    assert max(served) <= max(d["version"] for d in decisions if d["action"] == "promoted")
    asked, corrected = (int(x) for x in re.search(r"users: (\d+) questions, (\d+) corrections", text).groups())
    assert asked >= 3 and corrected >= 1
    assert "held-out wordings answered right: base" in text
    evaluated = ri.attach(str(run_dir)).metrics(keys=["eval/kb_accuracy"])["eval/kb_accuracy"]["step"]
    assert evaluated[0] == 0 and len(evaluated) >= 2  # the base, before the first step; then as it learns
    # every exchange and every correction is in the run's buffer, durable
    live = run_dir / "buffer"  # a directory per live source
    exchanges = pa.concat_tables([s.table for s in recover_source(live / EXCHANGES, exchange_schema())])
    feedback = pa.concat_tables([s.table for s in recover_source(live / FEEDBACK, feedback_schema())])
    assert exchanges.num_rows >= asked + corrected  # answered, then judged
    assert feedback.num_rows >= corrected and set(feedback.column("kind").to_pylist()) <= {"correction", "approved"}
    # the run checkpointed the adapter, not the base
    sizes = [p.stat().st_size for p in (run_dir / "checkpoints").glob("*/model.safetensors")]
    assert sizes and max(sizes) < 5_000_000
