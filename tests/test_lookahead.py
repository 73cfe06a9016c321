"""The lookahead agent on a real run: it pauses, tries its moves on branches from one
checkpoint (the same batches for each), scores each by evaluation, continues on the best,
and journals every candidate's figures and the compute it spent; an LLM's move handed to it
is tested the same way."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ray_interactive.agents.guardrails import Guardrails
from ray_interactive.agents.llm import ChatClient, LLMPolicy
from ray_interactive.agents.llm_server import LocalServer, ScriptedBackend
from ray_interactive.agents.lookahead import LookaheadAgent
from ray_interactive.agents.runtime import AgentRunner

from .conftest import regression_config, wait_until


def _checked_llm_tick(client: Any, reply: str) -> dict[str, Any]:
    """One tick of an LLM agent whose moves the lookahead tests (a scripted stand-in for a
    remote model answering ``reply``): the journal entry."""
    with LocalServer(ScriptedBackend([reply])) as server:
        look = LookaheadAgent(client, horizon=5, name="llm-check")
        runner = AgentRunner(client, LLMPolicy(ChatClient(server.url), check=True), Guardrails(min_interval_s=0.0),
                             lookahead=look)
        return runner.tick()


def test_the_lookahead_agent_tries_moves_on_branches_and_continues_on_the_best(tmp_path: Path, start: Any) -> None:
    handle = start(regression_config(tmp_path, lr=1e-3))
    client = handle.client()
    wait_until(lambda: client.status()["step"] >= 5, what="training to start")
    agent = LookaheadAgent(client, horizon=10)
    entry = agent.explore("a test")
    assert "error" not in entry, entry
    trials = {t["move"]: t for t in entry["trials"]}
    assert set(trials) == {"lr-x0.5", "keep", "lr-x2"}
    assert all(math.isfinite(t["score"]) and t["steps"] == 10 and t["error"] is None for t in trials.values())
    # Each candidate is a branch of its own, from the same checkpoint, kept in the tree.
    branches = client.branches()
    for t in trials.values():
        assert branches[t["branch"]]["checkpoint"] == entry["checkpoint"], branches[t["branch"]]
        assert branches[t["branch"]]["fork_step"] == entry["step"]
        assert t["end"] == f"{t['branch']}@{entry['step'] + 10}"
    best = min(trials.values(), key=lambda t: t["score"])
    assert entry["chosen"] == best["move"]
    assert entry["explored_steps"] == 30 and entry["kept_steps"] == 10
    # The run goes on from the best candidate's end, with its lr, and runs again.
    st = wait_until(lambda: (s := client.status())["status"] == "running" and s["step"] > entry["step"] + 10 and s,
                    what="the run to go on from the best candidate")
    assert st["branch"] == entry["continued_on"]
    lr = client.snapshot()["groups"][0]["hparams"]["lr"]
    assert lr == entry["lr"] * {"lr-x0.5": 0.5, "keep": 1.0, "lr-x2": 2.0}[best["move"]]
    # Journalled, and every command it sent says so.
    lines = (Path(st["run_dir"]) / "agent-lookahead.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["chosen"] == best["move"]
    mine = [c for c in client.commands() if c["source"] == "agent"]
    assert mine and all(c["comment"].startswith("[lookahead] lookahead 1") for c in mine)
    assert all(c["status"] == "applied" for c in mine)
    # Stopped, it finishes the candidate under way, skips the rest and still goes on.
    agent.stop()
    cut = agent.explore("stopped")
    assert "error" not in cut, cut
    assert len(cut["trials"]) == 1 and cut["cut_short"] == "stopped after 1 of 3 candidates"
    wait_until(lambda: client.status()["status"] == "running", what="the run to go on after a cut-short exploration")
    assert agent.compute_steps == 40
    # An LLM's proposal is tested, not applied blind: its move and the ones it lists under
    # "try", each against keeping the run as it is (a scripted stand-in for a remote model).
    ticked = _checked_llm_tick(client, '{"action": "half", "explanation": "noisy", "try": ["double"]}')
    tested = ticked["tested"]
    assert "error" not in tested or tested["error"] is None, tested
    assert [t["move"] for t in tested["trials"]] == ["keep", "half", "double"]
    assert ticked["sent"] == [] and tested["explored_steps"] == 15 and tested["kept_steps"] == 5, tested
    best = min(tested["trials"], key=lambda t: t["score"])
    assert tested["chosen"] == best["move"]
    st = wait_until(lambda: (s := client.status())["status"] == "running" and s, what="the run to go on after the test")
    assert st["branch"] == tested["continued_on"]
    checked = [json.loads(x) for x in (Path(st["run_dir"]) / "agent-llm-check.jsonl").read_text().splitlines()]
    assert checked[-1]["reason"].startswith("[llm] half: noisy") and checked[-1]["chosen"] == best["move"]
    # A rollback the LLM asks for ("reload_and_half") is tried from the checkpoint it reloads,
    # on its own branch, for the same horizon from that checkpoint's step.
    saved = client.wait(client.submit({"kind": "save_checkpoint", "tag": "before-rollback"}, source="api"))
    ckpt = str(saved.message).removeprefix("saved ")
    at = int(ckpt.rsplit("@", 1)[1])
    wait_until(lambda: client.status()["step"] >= at + 3, what="a few steps past the checkpoint")
    ticked = _checked_llm_tick(client, '{"action": "reload_and_half", "explanation": "spiky"}')
    tested = ticked["tested"]
    assert tested.get("error") is None, tested
    rollback = next(t for t in tested["trials"] if t["move"] == "reload_and_half")
    assert rollback["error"] is None and math.isfinite(rollback["score"]), rollback
    assert client.branches()[rollback["branch"]]["checkpoint"] == ckpt
    assert rollback["end"] == f"{rollback['branch']}@{at + 5}"
    wait_until(lambda: client.status()["status"] == "running", what="the run to go on after the rollback test")


def test_a_run_that_starts_paused_is_explored_before_its_first_step_then_resumed(tmp_path: Path, start: Any) -> None:
    import threading

    handle = start(regression_config(tmp_path, lr=1e-3, start_paused=True))
    client = handle.client()
    wait_until(lambda: client.status()["status"] == "paused", what="the run to wait for its first resume")
    agent = LookaheadAgent(client, horizon=5)
    thread = threading.Thread(target=agent.run, kwargs={"every": 10_000, "on_detector": False, "poll_s": 0.1,
                                                        "at_start": True}, daemon=True)
    thread.start()
    try:
        entry = wait_until(lambda: next(iter(agent.journal.read()), None), timeout=180, what="the first exploration")
        assert "error" not in entry, entry
        assert entry["reason"] == "before the run's first step" and entry["step"] == 0
        assert all(t["error"] is None and t["end"] == f"{t['branch']}@5" for t in entry["trials"]), entry["trials"]
        # it was paused only because it started so: the agent resumes it on the best candidate
        st = wait_until(lambda: (s := client.status())["status"] == "running" and s["step"] > 5 and s,
                        what="the run to train on after the exploration")
        assert st["branch"] == entry["continued_on"]
    finally:
        agent.stop()
        thread.join(timeout=60)
