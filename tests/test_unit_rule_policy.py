"""The rule agent's policy on synthetic observations: what each pattern makes it propose,
that it waits to see the effect of an action, and that it leaves a healthy run alone."""

from __future__ import annotations

import math

import numpy as np

from ray_interactive.agents.runtime import Observation, RulePolicy


def obs(loss: list[float], step: int | None = None, status: str = "running", lr: float = 1e-3,
        checkpoints: list[dict[str, object]] | None = None) -> Observation:
    step = len(loss) if step is None else step
    return Observation(step=step, status=status, branch="main", lr=lr, loss=list(loss),
                       loss_steps=list(range(step - len(loss) + 1, step + 1)), eval_loss=[], paused_by=None,
                       checkpoints=checkpoints or [], own_actions=[])


zigzag = list(2.0 + 0.3 * (-1.0) ** np.arange(40))
healthy = list(3.0 * np.exp(-np.arange(60) / 20) + 1.0)


def test_oscillation_halves_the_lr_and_then_it_waits_for_new_points() -> None:
    policy = RulePolicy()
    d = policy.decide(obs(zigzag))
    assert d.commands == [{"kind": "update_optimizer", "params": {"lr": 5e-4}}]
    assert d.rationale.startswith("oscillating:") and d.finding and d.finding["pattern"] == "oscillating"
    again = policy.decide(obs(zigzag + zigzag[:5], lr=5e-4))  # 5 new points since: too few to judge
    assert again.commands == [] and "waiting for" in again.rationale


def test_divergence_reloads_the_newest_finite_checkpoint_of_the_branch_and_halves_the_lr() -> None:
    ckpts = [{"id": "main@10", "branch": "main", "finite": True}, {"id": "main@20", "branch": "main", "finite": False},
             {"id": "b@5", "branch": "b", "finite": True}]
    d = RulePolicy().decide(obs([*healthy[:30], math.nan], checkpoints=ckpts))
    assert d.commands == [{"kind": "load_checkpoint", "checkpoint_id": "main@10"},
                          {"kind": "update_optimizer", "params": {"lr": 5e-4}}]
    assert d.rationale.startswith("non_finite")


def test_a_healthy_or_paused_run_is_left_alone() -> None:
    assert RulePolicy().decide(obs(healthy)).commands == []
    assert RulePolicy().decide(obs(zigzag, status="paused")).commands == []


def test_sampled_module_health_names_where_the_updates_are_largest() -> None:
    o = obs(zigzag)
    o.health = {"health/h.0/update_ratio": 0.01, "health/h.1/update_ratio": 0.2, "health/h.1/dead": 0.5,
                "health/skipped_steps": 0.0}
    d = RulePolicy().decide(o)
    assert d.finding and d.finding["largest_update_ratio"] == {"module": "h.1", "value": 0.2}
    assert "largest update/weight ratio in h.1 (0.2)" in d.rationale
    assert "largest_update_ratio" not in (RulePolicy().decide(obs(zigzag)).finding or {})


def test_a_flat_noisy_training_loss_is_not_decayed_while_the_validation_loss_still_falls() -> None:
    rng = np.random.default_rng(0)
    flat = list(6.0 + 0.3 * rng.standard_normal(60))  # a small batch's loss: flat within its noise
    improving = obs(flat)
    improving.eval_loss = [6.4, 6.2]  # -3.1 %
    d = RulePolicy().decide(improving)
    assert d.commands == [] and "validation loss still fell 3.1%" in d.rationale
    assert d.finding and d.finding["overruled_by"] == "eval/loss"
    stalled = obs(flat)
    stalled.eval_loss = [6.2, 6.19]  # -0.2 %: learning has stopped
    assert RulePolicy().decide(stalled).commands == [{"kind": "update_optimizer", "params": {"lr": 5e-4}}]
    assert RulePolicy().decide(obs(flat)).commands  # no evaluations: the training loss decides


def test_an_update_ratio_above_its_ceiling_halves_the_lr_before_the_loss_shows_anything() -> None:
    import pytest

    policy = RulePolicy(update_ceiling={"transformer.h.0": 0.008})
    o = obs(healthy)
    o.health = {"health/transformer.h.0/update_ratio": 0.02, "health/transformer.h.1/update_ratio": 0.5}
    d = policy.decide(o)  # h.1 has no ceiling: only h.0 counts
    assert d.commands == [{"kind": "update_optimizer", "params": {"lr": 5e-4}}]
    assert d.finding == {"pattern": "update_ceiling", "module": "transformer.h.0", "ratio": 0.02, "ceiling": 0.008}
    assert "above its ceiling" in d.rationale
    o2 = obs(healthy + healthy[:5], lr=5e-4)
    o2.health = o.health
    assert policy.decide(o2).commands == []  # waits for points (and a sample) after its action
    o3 = obs(healthy + healthy, lr=5e-4)
    o3.health = {"health/transformer.h.0/update_ratio": 0.006}
    assert policy.decide(o3).commands == []  # under the ceiling: the lr stays
    assert RulePolicy().decide(o).commands == []  # no ceiling: the healthy loss is left alone
    with pytest.raises(ValueError, match="positive number"):
        RulePolicy(update_ceiling={"h.0": -1.0})


def test_the_cli_refuses_a_bad_update_ceiling_before_connecting() -> None:
    from .test_cli import cli

    for bad in ("transformer.h.0", "h.0=abc", "h.0=-1", "=0.1"):
        out = cli("agent", "no-such-run", "--update-ceiling", bad)
        assert out.returncode != 0 and ("MODULE=RATIO" in out.stderr or "positive number" in out.stderr), out.stderr
    out = cli("agent", "no-such-run", "--policy", "lookahead", "--update-ceiling", "h.0=0.01")
    assert out.returncode != 0 and "needs --policy rule" in out.stderr
