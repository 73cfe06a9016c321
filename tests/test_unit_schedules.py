"""Learning-rate schedules: exact factors, rescaling by a new lr, serialisation."""

from __future__ import annotations

import math

import pytest

from ray_interactive.core.schedules import Schedule, factor, lr_at, rescale, start


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 1.0), (7, 1.0), (10_000, 1.0)],
)
def test_constant_factor_is_one_at_every_step(step: int, expected: float) -> None:
    assert factor(Schedule(kind="constant", start_step=3), step) == expected


def test_constant_ignores_steps_and_linear_without_steps_is_constant() -> None:
    assert factor(Schedule(kind="constant", steps=10), 50) == 1.0
    assert factor(Schedule(kind="linear", steps=None), 50) == 1.0


@pytest.mark.parametrize(
    ("step", "expected"),
    [(10, 1.0), (15, 0.55), (20, 0.1), (30, 0.1), (0, 1.0)],  # before start_step: t clamps to 0
)
def test_linear_factor_decays_from_one_to_min_ratio_over_steps(step: int, expected: float) -> None:
    s = Schedule(kind="linear", start_step=10, steps=10, min_lr_ratio=0.1)
    assert factor(s, step) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 1.0), (25, 0.5 * (1 + math.cos(math.pi / 4))), (50, 0.5), (100, 0.0), (150, 0.0)],
)
def test_cosine_factor_follows_half_cosine_to_zero(step: int, expected: float) -> None:
    s = Schedule(kind="cosine", steps=100)
    assert factor(s, step) == pytest.approx(expected, abs=1e-12)


def test_cosine_factor_with_min_ratio_ends_at_min_ratio() -> None:
    s = Schedule(kind="cosine", steps=100, min_lr_ratio=0.2)
    assert factor(s, 50) == pytest.approx(0.2 + 0.8 * 0.5, abs=1e-12)
    assert factor(s, 100) == pytest.approx(0.2, abs=1e-12)
    assert factor(s, 1000) == pytest.approx(0.2, abs=1e-12)


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 1.0), (9, 1.0), (10, 0.5), (19, 0.5), (20, 0.25), (35, 0.125)],
)
def test_step_factor_multiplies_by_gamma_every_period(step: int, expected: float) -> None:
    s = Schedule(kind="step", steps=10, gamma=0.5)
    assert factor(s, step) == pytest.approx(expected, abs=1e-15)


def test_warmup_ramps_linearly_then_hands_over_to_the_decay() -> None:
    s = Schedule(kind="linear", start_step=100, steps=10, warmup_steps=4, min_lr_ratio=0.0)
    assert [factor(s, 100 + i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # the decay starts after the warmup: step 104 is t=0 of the linear part
    assert factor(s, 104) == pytest.approx(1.0)
    assert factor(s, 109) == pytest.approx(0.5)
    assert factor(s, 114) == pytest.approx(0.0)


def test_warmup_with_constant_schedule_reaches_one_and_stays() -> None:
    s = Schedule(kind="constant", warmup_steps=2)
    assert [factor(s, i) for i in range(5)] == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0])


def test_lr_at_scales_each_groups_base_lr() -> None:
    s = Schedule(kind="step", steps=5, gamma=0.1, base_lrs=(1e-3, 2e-3))
    assert lr_at(s, 0, 5) == pytest.approx(1e-4)
    assert lr_at(s, 1, 5) == pytest.approx(2e-4)


def test_rescale_sets_the_lr_at_this_step_for_the_chosen_group_only() -> None:
    s = Schedule(kind="cosine", steps=100, base_lrs=(1e-3, 5e-4))
    new = rescale(s, 30, {1: 2e-4})
    assert lr_at(new, 1, 30) == pytest.approx(2e-4, rel=1e-12)
    assert lr_at(new, 0, 30) == lr_at(s, 0, 30)  # the other group is untouched
    assert new.base_lrs[0] == s.base_lrs[0]
    assert new.kind == "cosine" and new.steps == 100 and new.start_step == s.start_step


def test_rescale_keeps_the_shape_of_the_schedule() -> None:
    s = Schedule(kind="cosine", steps=100, base_lrs=(1e-3,), min_lr_ratio=0.05)
    new = rescale(s, 30, {0: 3e-4})
    for a, b in [(40, 60), (31, 90), (50, 99)]:
        assert lr_at(new, 0, b) / lr_at(new, 0, a) == pytest.approx(lr_at(s, 0, b) / lr_at(s, 0, a), rel=1e-12)
    # it keeps decaying from the new value
    assert lr_at(new, 0, 31) < 3e-4


def test_rescale_of_a_fully_decayed_schedule_becomes_constant_at_the_new_lr() -> None:
    s = Schedule(kind="linear", steps=50, base_lrs=(1e-3, 4e-4), min_lr_ratio=0.0)
    assert factor(s, 80) == 0.0
    new = rescale(s, 80, {0: 5e-4})
    assert new.kind == "constant"
    assert new.start_step == 80
    assert lr_at(new, 0, 80) == pytest.approx(5e-4)
    assert lr_at(new, 0, 10_000) == pytest.approx(5e-4)
    # a group that was not named keeps its current (decayed, zero) lr
    assert lr_at(new, 1, 80) == 0.0


def test_rescale_of_a_fully_decayed_cosine_becomes_constant() -> None:
    s = Schedule(kind="cosine", steps=10, base_lrs=(1e-3,))
    new = rescale(s, 10, {0: 1e-4})
    assert new.kind == "constant"
    assert [lr_at(new, 0, k) for k in (10, 11, 500)] == pytest.approx([1e-4] * 3)


def test_start_builds_a_segment_from_the_current_lrs() -> None:
    s = start("linear", 40, [1e-3, 2e-3], steps=20, min_lr_ratio=0.5, warmup_steps=0)
    assert s.start_step == 40 and s.base_lrs == (1e-3, 2e-3)
    assert lr_at(s, 1, 40) == pytest.approx(2e-3)
    assert lr_at(s, 1, 60) == pytest.approx(1e-3)


def test_schedule_round_trips_through_dict() -> None:
    s = Schedule(kind="step", start_step=7, base_lrs=(1e-3, 2.5e-4), steps=11, min_lr_ratio=0.3, gamma=0.7, warmup_steps=2)
    d = s.to_dict()
    assert d["base_lrs"] == [1e-3, 2.5e-4]  # JSON-friendly list
    back = Schedule.from_dict(d)
    assert back == s
    assert isinstance(back.base_lrs, tuple)
    assert [factor(back, k) for k in range(40)] == [factor(s, k) for k in range(40)]


def test_setting_lr_during_warmup_ends_the_warmup_at_that_lr() -> None:
    s = start("cosine", 0, [1e-3, 2e-3], steps=100, warmup_steps=50)
    r = rescale(s, 10, {0: 5e-4})
    assert lr_at(r, 0, 10) == pytest.approx(5e-4)  # exactly the new lr, now
    assert lr_at(r, 1, 10) == pytest.approx(lr_at(s, 1, 10))  # the other group keeps its lr
    assert r.warmup_steps == 0
    assert max(lr_at(r, 0, k) for k in range(10, 300)) == pytest.approx(5e-4)  # never above it
