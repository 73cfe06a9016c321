"""Ctrl-C and SIGTERM stop the long-running CLI commands cleanly and at once: ``agent`` and
``ui`` on a real run, in another process; one line, no traceback, exit 130 (SIGINT) or 0
(SIGTERM); ``run`` stops its run in order on either. Before, Ctrl-C took more than 5 s to stop an agent and SIGTERM printed a crash
dump (Ray's own handler exits from wherever the signal lands)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from .conftest import PACE_S, REPO, regression_config, wait_until

#: How long a stop may take here: it measures about a second (see the printout with -s);
#: the margin is for a machine busy with other tests.
DEADLINE_S = 10.0


def stop_with(sig: signal.Signals, proc: subprocess.Popen[str], err: Path) -> float:
    """Send ``sig`` and return the seconds until the process has exited."""
    t0 = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - t0
    print(f"{sig.name}: exited {proc.returncode} after {took:.2f} s; stderr: {err.read_text()[-300:]!r}")
    return took


def cli(address: str, out: Path, err: Path, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ray_interactive.cli", "--address", address, *argv], cwd=REPO,
                            stdout=out.open("w"), stderr=err.open("w"), text=True)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_agent_stops_at_once_on_a_signal(tmp_path: Path, start: Any, ray_cluster: dict[str, Any],
                                            sig: signal.Signals) -> None:
    handle = start(regression_config(tmp_path, checkpoint_interval_s=None))
    journal = Path(handle.config.resolved_run_dir) / "agent-rule.jsonl"
    out, err = tmp_path / "out", tmp_path / "err"
    proc = cli(ray_cluster["address"], out, err, "agent", handle.config.name, "--every", "10", "--min-interval", "0")
    wait_until(lambda: journal.exists() and journal.read_text().count("\n") >= 2, timeout=90, what="two ticks")
    took = stop_with(sig, proc, err)
    assert proc.returncode == {signal.SIGTERM: 0, signal.SIGINT: 130}[sig]
    assert took < DEADLINE_S
    text = err.read_text()
    assert "Traceback" not in text and f"agent stopped ({sig.name})" in text, text
    assert handle.client().status()["status"] == "running"  # the agent stopped, not the run


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_ui_stops_at_once_on_a_signal(tmp_path: Path, start: Any, ray_cluster: dict[str, Any],
                                          sig: signal.Signals) -> None:
    from .test_control_ui import free_port

    handle = start(regression_config(tmp_path, checkpoint_interval_s=None))
    out, err = tmp_path / "out", tmp_path / "err"
    proc = cli(ray_cluster["address"], out, err, "ui", handle.config.name, "--ui-port", str(free_port()))
    wait_until(lambda: "control UI of run" in out.read_text(), timeout=90, what="the UI to be up")
    took = stop_with(sig, proc, err)
    assert proc.returncode == {signal.SIGTERM: 0, signal.SIGINT: 130}[sig]
    assert took < DEADLINE_S
    text = err.read_text()
    assert "Traceback" not in text and f"control UI closed ({sig.name}" in text, text


class StuckBackend:
    """A model that takes as long as the test wants to answer (a big model on a slow machine)."""

    name = "stuck"

    def __init__(self) -> None:
        self.asked, self.release = threading.Event(), threading.Event()

    def reply(self, messages: list[dict[str, str]], choices: list[str] | None,
              max_tokens: int) -> tuple[str, dict[str, float] | None]:
        self.asked.set()
        self.release.wait(120)
        return '{"action": "half", "explanation": "too late"}', None


def test_an_llm_agent_stops_at_once_while_the_model_is_still_answering(
    tmp_path: Path, start: Any, ray_cluster: dict[str, Any]
) -> None:
    from ray_interactive.agents.llm_server import LocalServer

    handle = start(regression_config(tmp_path, checkpoint_interval_s=None))
    backend = StuckBackend()
    out, err = tmp_path / "out", tmp_path / "err"
    with LocalServer(backend) as server:
        proc = cli(ray_cluster["address"], out, err, "agent", handle.config.name, "--policy", "llm", "--llm-url",
                   server.url, "--every", "10", "--min-interval", "0")
        try:
            assert backend.asked.wait(90), err.read_text()  # a decision is in flight
            took = stop_with(signal.SIGINT, proc, err)
        finally:
            backend.release.set()
    assert proc.returncode == 130 and took < DEADLINE_S
    assert "Traceback" not in err.read_text() and "agent stopped (SIGINT)" in err.read_text()
    # the model's answer came after the process had gone: nothing was sent
    assert not [r for r in handle.client().commands() if r["source"] == "agent"]


def test_a_watched_run_stops_in_order_on_sigterm(tmp_path: Path, ray_cluster: dict[str, Any]) -> None:
    out, err = tmp_path / "out", tmp_path / "err"
    run_dir = tmp_path / "r"
    from ray_interactive.runtime.client import connect

    name = f"sig-{uuid.uuid4().hex[:8]}"
    proc = cli(ray_cluster["address"], out, err, "run", "--example", "regression", "--name", name, "--quiet",
               "--run-dir", str(run_dir), "--task-arg", f"pace_s={PACE_S}", "--set", "torch_threads=1",
               "--set", "trainer_num_cpus=0")
    wait_until(lambda: f"run {name!r} started" in out.read_text(), timeout=120, what="the run to start")
    wait_until(lambda: connect(name).status()["step"] > 10, timeout=120, what="steps")
    stop_with(signal.SIGTERM, proc, err)  # as long as the final checkpoint takes
    assert proc.returncode == 0 and "Traceback" not in err.read_text(), err.read_text()[-2000:]
    assert "stopped at step" in out.read_text()
    log = (run_dir / "commands.jsonl").read_text()
    assert "SIGTERM" in log  # the stop's comment says what stopped it
