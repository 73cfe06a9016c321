"""An agent's decisions are whole or nothing, and bounded over time (no Ray): the runtime on
a real core controller fed progress reports, the LLM policy over real HTTP.

The issue behind it: an LLM agent answered ``reload_and_half`` at 7 of 7 decisions on a
run with no checkpoint; each time only the halving went out (lr 0.01 -> 7.8e-05) and the
journal never said the reload was skipped."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ray_interactive.agents.guardrails import Guardrails
from ray_interactive.agents.llm import ChatClient, LLMPolicy
from ray_interactive.agents.llm_server import LocalServer, ScriptedBackend
from ray_interactive.agents.runtime import AgentRunner, Decision, Observation, RulePolicy, screen
from ray_interactive.core.checkpoints import CheckpointInfo
from ray_interactive.core.config import RunConfig, TaskSpec
from ray_interactive.core.controller import Controller
from ray_interactive.core.messages import Progress, TrainerStatus
from ray_interactive.examples.regression import RegressionTask

from .conftest import snapshot_of


class ControllerClient:
    """The client calls an agent makes, answered by a core controller in this process (the
    Ray actor wraps the same class)."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller

    def status(self) -> dict[str, Any]:
        return self.c.status()

    def metrics(self, keys: list[str] | None = None, since: int | None = None) -> dict[str, Any]:
        return self.c.get_metrics(keys=keys, since=since)

    def metric_keys(self) -> list[str]:
        return self.c.metric_keys()

    def commands(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self.c.commands(limit)

    def checkpoints(self) -> list[dict[str, Any]]:
        return self.c.list_checkpoints()

    def snapshot(self) -> dict[str, Any]:
        return self.c.snapshot_view()

    def submit(self, payload: dict[str, Any], source: str | None = None) -> Any:
        return self.c.submit(payload, source)


class Run:
    """A controller whose "trainer" is this test: it reports steps with a loss and an lr."""

    def __init__(self, run_dir: Path) -> None:
        config = RunConfig(name="unit", task=TaskSpec(target="ray_interactive.examples.regression:RegressionTask"),
                           run_dir=run_dir)
        self.controller = Controller(config)
        task = RegressionTask(in_dim=4, width=8, depth=1)
        model = task.build_model()
        self.controller.trainer_snapshot(snapshot_of(model, task.build_optimizer(model, 0.01)))
        self.client = ControllerClient(self.controller)
        self.step = 0

    def steps(self, n: int, lr: float, loss: float = 1.0) -> None:
        rows = [(s, float(s), {"loss": loss - 1e-4 * s, "lr": lr}) for s in range(self.step + 1, self.step + n + 1)]
        self.step += n
        status = TrainerStatus(status="running", step=self.step, time=time.time(), branch="main")
        self.controller.trainer_progress(Progress(branch="main", status=status, rows=rows))

    def checkpoint(self) -> str:
        cid = f"main@{self.step}"
        self.controller.checkpoint_saved(CheckpointInfo(id=cid, branch="main", step=self.step,
                                                        created_at=time.time(), reason="periodic"))
        return cid


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    r = Run(tmp_path / "run")
    yield r
    r.controller.close()


def test_reload_and_half_with_nothing_to_reload_is_skipped_whole_and_journalled(run: Run) -> None:
    run.steps(100, lr=0.01)  # a falling loss, and no checkpoint yet
    backend = ScriptedBackend(['{"action": "reload_and_half", "explanation": "just in case"}'])
    with LocalServer(backend) as server:
        runner = AgentRunner(run.client, LLMPolicy(ChatClient(server.url)), Guardrails(min_interval_s=0.0))
        entry = runner.tick()
        assert entry["sent"] == [] and run.controller.commands() == []  # not even the halving
        assert "cannot be carried out in full" in entry["skipped"]
        assert "no finite checkpoint on branch 'main' to reload" in entry["skipped"]
        load, half = entry["refused"]
        assert load["command"] == {"kind": "load_checkpoint", "checkpoint_id": None}
        assert half["command"]["kind"] == "update_optimizer" and half["why"].startswith("not sent")
        assert runner.journal.read()[-1]["skipped"] == entry["skipped"]
        # with a checkpoint to go back to, the same answer is carried out in full
        ckpt = run.checkpoint()
        run.steps(10, lr=0.01)
        entry = runner.tick()
    assert [s["command"]["kind"] for s in entry["sent"]] == ["load_checkpoint", "update_optimizer"]
    assert entry["sent"][0]["command"]["checkpoint_id"] == ckpt and "skipped" not in entry
    assert [r["kind"] for r in run.controller.commands()] == ["load_checkpoint", "update_optimizer"]


class Halver:
    """Halves the lr at every decision (each within the per-decision bound)."""

    name = "halver"

    def decide(self, obs: Observation) -> Decision:
        assert obs.lr is not None
        return Decision([{"kind": "update_optimizer", "params": {"lr": obs.lr / 2}}], "halve it again")


def test_halving_at_every_decision_stops_at_the_drift_bound(run: Run) -> None:
    runner = AgentRunner(run.client, Halver(), Guardrails(min_interval_s=0.0), every=50)
    lr, sent = 0.01, []
    for _ in range(7):  # the seven decisions, 50 steps apart
        run.steps(50, lr=lr)
        entry = runner.tick()
        if entry["sent"]:
            sent.append(entry["sent"][0]["command"]["params"]["lr"])
            lr = sent[-1]  # as if applied: the next report carries it
    assert sent == [0.005, 0.0025, 0.00125]  # 8x; a fourth halving would be 16x within 500 steps
    assert "max_lr_drift" in entry["skipped"] and "16x below 0.01" in entry["refused"][0]["why"]
    run.steps(500, lr=lr)  # the window moved past the first moves
    assert runner.tick()["sent"][0]["command"]["params"]["lr"] == 0.000625


def test_screen_refuses_a_decision_whole_when_any_part_fails() -> None:
    obs = Observation(step=100, status="running", branch="main", lr=0.01, loss=[], loss_steps=[], eval_loss=[],
                      paused_by=None, checkpoints=[{"id": "main@50", "branch": "main"}], own_actions=[])
    rails = Guardrails(min_interval_s=0.0)
    half = {"kind": "update_optimizer", "params": {"lr": 0.005}}
    assert screen([{"kind": "load_checkpoint", "checkpoint_id": "main@50"}, half], obs, obs.facts(None), rails) == []
    unknown = screen([{"kind": "load_checkpoint", "checkpoint_id": "main@70"}, half], obs, obs.facts(None), rails)
    assert "'main@70' is not one of the run's checkpoints" in unknown[0]["why"] and unknown[1]["why"].startswith("not")
    wild = screen([half, {"kind": "update_optimizer", "params": {"lr": 0.1}}], obs, obs.facts(None), rails)
    assert [w["why"].split(":")[0] for w in wild] == ["not sent", "lr 0.1 is 10x the current 0.01; one decision may change it by 0.5x to 2x"]


def test_the_rule_agent_says_when_there_is_nothing_to_reload() -> None:
    rising = [1.0 + 0.1 * i for i in range(30)]
    obs = Observation(step=30, status="running", branch="main", lr=0.01, loss=rising, loss_steps=list(range(1, 31)),
                      eval_loss=[], paused_by=None, checkpoints=[], own_actions=[])
    d = RulePolicy().decide(obs)
    assert d.finding is not None and d.finding["pattern"] == "diverging" and d.finding["reload"] is None
    assert "no finite checkpoint on branch 'main' to reload: halve the lr only" in d.rationale
    assert d.commands == [{"kind": "update_optimizer", "params": {"lr": 0.005}}]
