"""Agents on a real run (regression task, local Ray): the rule agent finds the oscillation
of a too-high lr and halves it through the command API, with its rationale in the command
log and its journal; guardrails refuse an out-of-bounds proposal and a policy that fails
is journalled, while the run goes on; the CLI runs an agent from another process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ray_interactive.agents.guardrails import Guardrails
from ray_interactive.agents.runtime import AgentRunner, Decision, Observation, RulePolicy

from .conftest import REPO, regression_config, wait_until


def oscillating_run(tmp_path: Path, start: Any) -> Any:
    # lr 0.3 without clipping: the regression loss bounces between steps (see the detectors)
    handle = start(regression_config(tmp_path, lr=0.3, grad_clip=None, checkpoint_interval_s=None))
    client = handle.client()
    wait_until(lambda: client.status()["step"] >= 80, what="steps")
    return handle, client


def test_the_rule_agent_halves_an_oscillating_lr_with_its_reason_in_the_log_and_journal(
    tmp_path: Path, start: Any
) -> None:
    handle, client = oscillating_run(tmp_path, start)
    runner = AgentRunner(client, RulePolicy(), Guardrails(min_interval_s=0.0), every=20)
    entry = runner.tick()
    [sent] = [s for s in entry["sent"] if s["command"]["kind"] == "update_optimizer"]
    assert sent["command"]["params"]["lr"] == 0.15 and sent["status"] == "accepted"
    rec = client.wait(sent["id"])
    assert rec.status.value == "applied"
    row = next(r for r in client.commands() if r["id"] == sent["id"])
    assert row["source"] == "agent" and row["comment"].startswith("[rule] ") and entry["finding"]["pattern"] in (
        "oscillating", "diverging", "plateau")
    [line] = runner.journal.read()
    assert line["rationale"] == entry["rationale"] and line["sent"][0]["id"] == sent["id"]
    assert runner.journal.path == Path(handle.config.resolved_run_dir) / "agent-rule.jsonl"
    step = client.status()["step"]
    wait_until(lambda: client.metrics(keys=["lr"], since=step + 1)["lr"]["value"][-1:] == [0.15], what="the new lr")


class Reckless:
    """A policy that proposes what the guardrails must stop."""

    name = "reckless"

    def __init__(self, lr_factor: float = 3.0, fail: bool = False) -> None:
        self.lr_factor, self.fail = lr_factor, fail

    def decide(self, obs: Observation) -> Decision:
        if self.fail:
            raise RuntimeError("the model answered nonsense")
        assert obs.lr is not None
        return Decision([{"kind": "update_optimizer", "params": {"lr": obs.lr * self.lr_factor}}, {"kind": "stop"}],
                        "go faster, then stop")


def test_guardrails_refuse_out_of_bounds_proposals_and_a_failing_policy_is_journalled(
    tmp_path: Path, start: Any
) -> None:
    handle, client = oscillating_run(tmp_path, start)
    before = len(client.commands())
    runner = AgentRunner(client, Reckless(), Guardrails(min_interval_s=0.0))
    entry = runner.tick()
    assert entry["sent"] == []
    whys = [r["why"] for r in entry["refused"]]
    assert "3x the current" in whys[0] and "not among the kinds" in whys[1]
    failing = AgentRunner(client, Reckless(fail=True), name="reckless")
    bad = failing.tick()
    assert "the model answered nonsense" in bad["error"]
    assert [e.get("error") for e in failing.journal.read()][-1] == bad["error"]
    assert len(client.commands()) == before  # nothing was sent
    step = client.status()["step"]
    wait_until(lambda: client.status()["step"] > step + 10 and client.status()["status"] == "running",
               what="the run to go on")


def test_the_cli_runs_an_agent_from_another_process(tmp_path: Path, start: Any, ray_cluster: dict[str, Any]) -> None:
    handle, client = oscillating_run(tmp_path, start)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray_interactive.cli", "--address", ray_cluster["address"], "agent", handle.config.name,
         "--every", "20", "--min-interval", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    journal = Path(handle.config.resolved_run_dir) / "agent-rule.jsonl"
    try:
        wait_until(lambda: journal.exists() and len(journal.read_text().splitlines()) >= 2, timeout=90,
                   what="two agent ticks")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert "agent 'rule' on run" in out and "step " in out
    entries = [json.loads(x) for x in journal.read_text().splitlines()]
    assert any(e["sent"] for e in entries)
    assert any(r["source"] == "agent" for r in client.commands())
    assert os.path.getsize(journal) > 0 and time.time() - entries[-1]["time"] < 120
