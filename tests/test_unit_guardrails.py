"""The agent runtime's guardrails: kinds, lr bounds per decision, over a window of steps
and absolute, the rate limit, and a person's pause that no agent lifts."""

from __future__ import annotations

import pytest

from ray_interactive.agents.guardrails import Guardrails, LrHistory, RunFacts, vet

rails = Guardrails(min_interval_s=30.0)
running = RunFacts(lrs=[1e-3, 1e-3], paused_by=None, seconds_since_last=None)


def lr(value: object) -> dict[str, object]:
    return {"kind": "update_optimizer", "params": {"lr": value}}


def test_an_lr_change_within_the_bounds_passes() -> None:
    assert vet(lr(5e-4), running, rails) is None
    assert vet(lr(2e-3), running, rails) is None


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (lr(1e-4), "0.1x the current"),
        (lr(5e-3), "5x the current"),
        (lr(-1.0), "positive number"),
        (lr("fast"), "positive number"),
        (lr(True), "positive number"),
        ({"kind": "stop"}, "not among the kinds"),
        ({"kind": "update_module", "module": "0", "op": "freeze"}, "not among the kinds"),
    ],
)
def test_out_of_bounds_or_unknown_actions_are_refused_with_why(payload: dict[str, object], reason: str) -> None:
    why = vet(payload, running, rails)
    assert why is not None and reason in why


def test_absolute_lr_bounds_hold_whatever_the_factor() -> None:
    tight = Guardrails(lr_min=1e-4, lr_max=2e-3)
    assert "outside" in (vet(lr(3e-3), RunFacts([2e-3], None, None), tight) or "")
    assert "outside" in (vet(lr(5e-5), RunFacts([1e-4], None, None), tight) or "")
    with pytest.raises(ValueError, match="lr_min"):
        Guardrails(lr_min=1.0, lr_max=0.1)


def test_the_rate_limit_and_a_persons_pause() -> None:
    soon = RunFacts(lrs=[1e-3], paused_by=None, seconds_since_last=5.0)
    assert "rate limit" in (vet(lr(5e-4), soon, rails) or "")
    assert vet(lr(5e-4), RunFacts([1e-3], None, 31.0), rails) is None
    for person in ("ui", "cli", "api"):
        assert "paused by a person" in (vet({"kind": "resume"}, RunFacts([1e-3], person, None), rails) or "")
    assert vet({"kind": "resume"}, RunFacts([1e-3], "agent", None), rails) is None  # its own pause


def test_the_lr_drifts_at_most_the_set_factor_within_the_window() -> None:
    # the run: a halving at every decision, each within the per-decision bound
    rails = Guardrails(min_interval_s=0.0)  # max_lr_drift 10 within 500 steps
    history, lr_now, step, refused = LrHistory(), 0.01, 1000, None
    for _ in range(7):
        facts = RunFacts([lr_now], None, None, history.within(step, rails.drift_window_steps))
        refused = vet(lr(lr_now / 2), facts, rails)
        if refused is not None:
            break
        history.record(step, lr_now, lr_now / 2)
        lr_now, step = lr_now / 2, step + 50
    assert lr_now == 0.01 / 8  # three halvings (8x) pass, the fourth (16x) does not
    assert refused is not None and "16x below 0.01" in refused and "at most 10x within 500 steps" in refused
    # once the window has moved past the first moves, the lr may go on down
    later = step + rails.drift_window_steps
    assert vet(lr(lr_now / 2), RunFacts([lr_now], None, None, history.within(later, 500)), rails) is None
    # up as well as down, and exactly the factor is allowed
    up = RunFacts([4e-3], None, None, (1e-3, 2e-3, 4e-3))
    assert "16x above 0.001" in (vet(lr(1.6e-2), up, Guardrails(lr_factor_max=4.0)) or "")
    assert vet(lr(1e-2), RunFacts([5e-3], None, None, (1e-3,)), rails) is None


def test_a_move_at_a_later_step_counts_after_a_load_went_back() -> None:
    history = LrHistory()
    history.record(900, 0.01, 0.005)
    assert history.within(300, 500) == (0.01, 0.005)  # a reload took the run back to step 300
    assert history.within(1400, 500) == ()


@pytest.mark.parametrize("field", [{"max_lr_drift": 0.5}, {"drift_window_steps": 0}, {"max_lr_drift": "x"}])
def test_drift_settings_are_validated(field: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(field))):
        Guardrails(**field)
