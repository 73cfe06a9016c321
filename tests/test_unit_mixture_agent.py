"""The mixture agent's policy: weight moves toward the sources that lag, bounded so none
starves or takes over, untracked sources untouched; the decision it makes from an
observation."""

from __future__ import annotations

import math

import pytest

from ray_interactive.agents.mixture import MixturePolicy, shift_mixture
from ray_interactive.agents.runtime import Observation


def obs(evals: dict[str, float], mixture: dict[str, float], status: str = "running") -> Observation:
    return Observation(step=100, status=status, branch="main", lr=1e-3, loss=[], loss_steps=[], eval_loss=[],
                       paused_by=None, checkpoints=[], own_actions=[], evals=evals, mixture=mixture)


def test_weight_moves_toward_the_lagging_source_and_the_total_and_others_stay() -> None:
    before = {"a": 1.0, "b": 1.0, "base": 3.0}
    after = shift_mixture(before, {"a": 0.9, "b": 0.1})  # a lags (a higher loss)
    assert after["a"] > before["a"] and after["b"] < before["b"]
    assert after["a"] + after["b"] == pytest.approx(2.0)
    assert after["base"] == 3.0
    same = shift_mixture(before, {"a": 0.5, "b": 0.5})
    assert same["a"] == pytest.approx(1.0) and same["b"] == pytest.approx(1.0)


def test_no_source_starves_or_takes_over_however_often_it_is_applied() -> None:
    w = {"a": 1.0, "b": 1.0, "c": 1.0}
    for _ in range(50):  # "a" lags every time
        w = shift_mixture(w, {"a": 10.0, "b": 0.0, "c": 0.1}, rate=2.0, floor=0.1, cap=0.7)
    total = sum(w.values())
    assert total == pytest.approx(3.0)
    assert w["a"] / total == pytest.approx(0.7)
    assert min(w["b"], w["c"]) / total >= 0.1 - 1e-9


def test_bad_bounds_and_figures_are_refused() -> None:
    with pytest.raises(ValueError, match="at least two"):
        shift_mixture({"a": 1.0}, {"a": 1.0})
    with pytest.raises(ValueError, match="bounds"):
        shift_mixture({"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 0.0}, floor=0.6)
    with pytest.raises(ValueError, match="not finite"):
        shift_mixture({"a": 1.0, "b": 1.0}, {"a": math.nan, "b": 0.0})
    with pytest.raises(ValueError, match="two sources"):
        MixturePolicy({"a": "eval/a/loss"})


def test_the_policy_waits_for_its_figures_then_shifts_toward_the_worse_score() -> None:
    policy = MixturePolicy({"rare": "eval/rare/success", "frequent": "eval/frequent/success"}, higher_is_better=True)
    assert not policy.decide(obs({}, {"rare": 1.0, "frequent": 1.0})).commands
    d = policy.decide(obs({"eval/rare/success": 0.2, "eval/frequent/success": 0.9}, {"rare": 1.0, "frequent": 1.0}))
    (cmd,) = d.commands
    assert cmd["kind"] == "set_data_mixture" and cmd["weights"]["rare"] > cmd["weights"]["frequent"]
    assert d.rationale.startswith("rare lags")
    even = policy.decide(obs({"eval/rare/success": 0.5, "eval/frequent/success": 0.5}, {"rare": 1.0, "frequent": 1.0}))
    assert not even.commands and "even enough" in even.rationale
    assert not policy.decide(obs({"eval/rare/success": 0.2, "eval/frequent/success": 0.9}, {"rare": 1.0})).commands


def test_the_cli_refuses_a_mixture_agent_without_two_tracked_sources_before_connecting() -> None:
    from .test_cli import cli

    out = cli("agent", "no-such-run", "--policy", "mixture", "--track", "rare=eval/rare/loss")
    assert out.returncode != 0 and "track at least two sources" in out.stderr
    out = cli("agent", "no-such-run", "--policy", "mixture", "--track", "rare")
    assert out.returncode != 0 and "SOURCE=METRIC" in out.stderr
