"""``reset_optimizer_state``, the kind added in one file (``core/commands/kinds/reset_optimizer_state.py``):
its check at submission and its effect, and that the CLI, the control UI and the agents'
guardrails offer it with no edit of their own; then on a real run, through the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ray_interactive.agents.guardrails import Guardrails, RunFacts, vet
from ray_interactive.cli import main as cli_main
from ray_interactive.core.commands import CommandStatus, ResetOptimizerState, RunView, parse_command
from ray_interactive.core.config import RunConfig
from ray_interactive.core.hparams import describe_optimizer
from ray_interactive.core.state import OwnSchedule, TrainState
from ray_interactive.core.steering import Frontend, Steering
from ray_interactive.ui.dashboard import Dashboard

from .conftest import REPO, Recorder, regression_config, wait_until


def steered(tmp_path: Path) -> Steering:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW([{"params": model[0].parameters(), "name": "decay"},
                             {"params": model[1].parameters(), "name": "head", "weight_decay": 0.0}], lr=0.01)
    state = TrainState(schedule=OwnSchedule.starting(opt))
    core = Steering(RunConfig(name="k", run_dir=tmp_path / "run"), model, opt, state, Recorder().reporter, Frontend("loop"))
    for _ in range(3):
        model(torch.randn(16, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return core


def test_it_clears_the_state_of_one_group_or_all_and_keeps_the_weights(tmp_path: Path) -> None:
    core = steered(tmp_path)
    opt, weights = core.optimizer, [p.detach().clone() for p in core.model.parameters()]
    assert len(opt.state) == 4
    assert core.apply(ResetOptimizerState(group="head")) == "cleared the optimizer state of 2 tensors (head)"
    assert set(opt.state) == set(core.model[0].parameters())
    assert core.apply(ResetOptimizerState()) == "cleared the optimizer state of 2 tensors (decay, head)"
    assert not opt.state and all(torch.equal(a, b) for a, b in zip(weights, core.model.parameters()))
    core.model(torch.randn(16, 4)).pow(2).mean().backward()
    opt.step()  # Adam starts afresh: step 1 again
    assert all(float(s["step"]) == 1 for s in opt.state.values())


def test_a_group_that_does_not_exist_is_refused_at_submission(tmp_path: Path) -> None:
    core = steered(tmp_path)
    view = RunView(groups=describe_optimizer(core.optimizer), modules={})
    with pytest.raises(ValueError, match="no param group named 'nope'; groups: decay, head"):
        parse_command({"kind": "reset_optimizer_state", "group": "nope"}).check(view)
    every = parse_command({"kind": "reset_optimizer_state"})
    assert every.check(view) is every  # accepted as sent


def test_the_cli_the_ui_and_the_guardrails_offer_it_with_no_edit_of_their_own(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["kinds", "--json"]) == 0
    listed = {k["kind"]: k for k in json.loads(capsys.readouterr().out)}
    assert listed["reset_optimizer_state"]["example"] == "reset_optimizer_state group=decay"
    assert [a["name"] for a in listed["reset_optimizer_state"]["args"]] == ["group"]

    assert "reset_optimizer_state" in [k for _, k in Dashboard.kind_choices()]
    help_text, example = Dashboard.kind_help("reset_optimizer_state")
    assert "Forget the optimizer's running state" in help_text and "`group`" in help_text and example == "group=decay"

    rails = Guardrails()
    assert "reset_optimizer_state" in rails.allowed
    facts = RunFacts(lrs=[1e-3], paused_by=None, seconds_since_last=None)
    assert vet({"kind": "reset_optimizer_state"}, facts, rails) is None
    with pytest.raises(ValueError, match="unknown command kind"):
        Guardrails(allowed=frozenset({"reset_optimizer_states"}))


def test_a_run_applies_it_sent_from_the_cli(tmp_path: Path, start: Any, ray_cluster: dict[str, Any]) -> None:
    import subprocess

    handle = start(regression_config(tmp_path))
    client = handle.client()
    wait_until(lambda: client.status()["step"] >= 5, what="steps")
    cli = [sys.executable, "-m", "ray_interactive.cli", "--address", ray_cluster["address"]]
    out = subprocess.run([*cli, "send", handle.config.name, "reset_optimizer_state", "--wait"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "reset_optimizer_state: applied at step" in out.stdout and "cleared the optimizer state of" in out.stdout
    [row] = [r for r in client.commands() if r["kind"] == "reset_optimizer_state"]
    assert row["status"] == CommandStatus.APPLIED.value and row["source"] == "cli"
    wait_until(lambda: client.status()["step"] >= row["applied_step"] + 5, what="training to go on")
