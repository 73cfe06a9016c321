"""When a running run is called stalled: a bound on the run's own pace (core/stalls.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_interactive.core.controller import Controller
from ray_interactive.core.messages import Progress, TrainerStatus
from ray_interactive.core.stalls import STALL_CEILING_S, STALL_FLOOR_S, STALL_UNKNOWN_S, StepClock, stall_bound

from .test_unit_controller import make_config


def test_the_bound_follows_the_pace_between_a_floor_and_a_ceiling() -> None:
    assert stall_bound(None) == STALL_UNKNOWN_S  # no pace yet: the old fixed bound
    assert stall_bound(0.005) == STALL_FLOOR_S  # a 5 ms model: seconds, not two minutes
    assert stall_bound(2.0) == pytest.approx(40.0)  # twenty steps
    assert stall_bound(120.0) == STALL_CEILING_S
    assert stall_bound(0.005, busy=True) == STALL_CEILING_S  # an evaluation under way is not a hang


def test_the_pace_is_measured_across_running_time_only() -> None:
    clock = StepClock()
    clock.seen(10, running=True, now=100.0)  # the first move: startup, not a pace
    assert clock.step_time() is None
    clock.seen(20, running=True, now=101.0)
    clock.seen(30, running=True, now=102.0)
    assert clock.step_time() == pytest.approx(0.1)
    clock.seen(30, running=False, now=103.0)  # paused for a long while...
    clock.seen(31, running=True, now=500.0)  # ...the gap across the pause is no pace
    assert clock.step_time() == pytest.approx(0.1)
    assert clock.idle(now=501.0) == pytest.approx(1.0)


def test_a_resumed_run_is_not_stalled_by_the_time_it_was_paused() -> None:
    clock = StepClock()
    clock.seen(5, running=True, now=0.0)
    clock.seen(5, running=False, now=1.0)
    clock.seen(5, running=False, now=900.0)  # paused for 15 minutes
    clock.seen(5, running=True, now=900.5)  # resumed; no step yet
    assert clock.idle(now=901.0) == pytest.approx(1.0)


def test_the_controller_bounds_a_fast_run_by_its_pace_and_a_busy_one_by_the_ceiling(tmp_path: Path) -> None:
    import time

    c = Controller(make_config(tmp_path / "run"))
    try:
        assert c.config.stall_after_s is None and c.stall_after() == STALL_UNKNOWN_S
        for step in range(1, 6):
            c.trainer_progress(Progress(branch="main", status=TrainerStatus(
                status="running", step=step, branch="main", time=time.time()), rows=[]))
        assert c.stall_after() == STALL_FLOOR_S  # steps of microseconds here
        c.trainer_progress(Progress(branch="main", status=TrainerStatus(
            status="running", step=5, branch="main", time=time.time(), busy="evaluating"), rows=[]))
        assert c.stall_after() == STALL_CEILING_S
        c.config = c.config.model_copy(update={"stall_after_s": 3.0})
        assert c.stall_after() == 3.0  # a bound the user set wins
    finally:
        c.close()
