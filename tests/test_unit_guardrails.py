"""The agent runtime's guardrails: kinds, lr bounds per decision and absolute, the rate
limit, and a person's pause that no agent lifts."""

from __future__ import annotations

import pytest

from ray_interactive.agents.guardrails import Guardrails, RunFacts, vet

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
