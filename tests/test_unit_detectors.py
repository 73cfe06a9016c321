"""The rule agent's detectors on synthetic loss curves: each pattern is found where it is,
and not where it is not (a healthy decreasing curve triggers nothing)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ray_interactive.agents.detectors import diagnose, diverging, non_finite, oscillating, plateau

rng = np.random.default_rng(0)
steps = np.arange(200)
healthy = 3.0 * np.exp(-steps / 60) + 1.0 + rng.normal(0, 0.005, len(steps))  # decreasing, a little noise


def test_a_healthy_curve_triggers_nothing() -> None:
    for n in (5, 30, 200):
        assert diagnose(healthy[:n]) is None


def test_a_non_finite_loss_is_found_first() -> None:
    found = diagnose([*healthy[:50], math.nan])
    assert found is not None and found.pattern == "non_finite"
    assert non_finite([1.0, math.inf]) is not None and non_finite([1.0, 2.0]) is None


def test_divergence_needs_a_rise_far_above_the_best_that_goes_on() -> None:
    rising = np.concatenate([healthy[:40], 1.5 * np.geomspace(1.0, 4.0, 15)])
    found = diagnose(rising)
    assert found is not None and found.pattern == "diverging" and found.figures["ratio"] >= 1.5
    spike_then_back = np.concatenate([healthy[:40], [4.0, 3.0, 2.2, 2.0, 1.9, 1.85]])
    assert diverging(spike_then_back) is None  # back down: not diverging


def test_oscillation_is_large_sign_flipping_changes_without_progress() -> None:
    zigzag = 2.0 + 0.3 * (-1.0) ** np.arange(40) + rng.normal(0, 0.01, 40)
    found = diagnose(zigzag)
    assert found is not None and found.pattern == "oscillating"
    assert found.figures["flip_rate"] > 0.8 and found.figures["swing"] > 0.2
    small = 2.0 + 0.01 * (-1.0) ** np.arange(40)  # flips, but by 1 %: noise, not oscillation
    assert oscillating(small) is None
    falling_zigzag = np.linspace(4.0, 1.0, 40) + 0.1 * (-1.0) ** np.arange(40)  # flips while improving fast
    assert oscillating(falling_zigzag) is None


def test_a_plateau_is_no_progress_over_the_window() -> None:
    flat = 1.2 + rng.normal(0, 0.002, 80)
    found = diagnose(flat)
    assert found is not None and found.pattern == "plateau" and found.figures["progress"] < 0.01
    assert plateau(healthy[:60]) is None  # still improving
    assert plateau(flat[:30]) is None  # too few points to say


@pytest.mark.parametrize("detector", [diverging, oscillating, plateau])
def test_detectors_ignore_short_or_empty_histories(detector: object) -> None:
    assert detector([]) is None  # type: ignore[operator]
    assert detector([1.0, 2.0]) is None  # type: ignore[operator]
