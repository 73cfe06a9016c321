"""The health-indicator study's judgement (studies/health_indicators.py), on made-up runs
whose answer is known: an indicator that rises early in the runs that go wrong is found,
its threshold comes from the calibration seed only, and its lead over the loss is counted."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))

import health_indicators as hi  # noqa: E402

STEPS = list(range(0, 400, 10))


def _run(lr: float, seed: int, bad: bool) -> dict:
    jitter = 0.0001 * seed  # seed to seed, within the 5 % margin of the fitted threshold
    # the loss: falls in every run; a bad run's climbs back from step 250 (the detectors see it late)
    loss = [6.0 - 0.004 * s + (0.02 * (s - 250) if bad and s > 250 else 0.0) + 0.001 * (s % 7) for s in range(400)]
    # the indicator: flat in good runs, rising from step 60 in bad ones
    ratio = [0.01 + jitter + (0.001 * (s - 60) if bad and s > 60 else 0.0) for s in STEPS]
    flat = [1.0 + jitter for _ in STEPS]
    return {"lr": lr, "seed": seed, "final_eval_loss": 6.5 if bad else 5.0, "wall_s": 1.0, "series": {
        "loss": {"step": list(range(400)), "value": loss},
        "health/transformer.h.0/update_ratio": {"step": STEPS, "value": ratio},
        "health/transformer.h.0/act_std": {"step": STEPS, "value": flat},
    }}


def test_an_early_indicator_is_found_on_the_test_seeds() -> None:
    runs = [_run(lr, seed, bad=lr > 1e-2) for seed in (0, 1, 2) for lr in (5e-2, 2e-2, 1e-3, 3e-4)]
    out = hi.analyse(runs, calibration_seed=0)
    assert all(r["bad"] == (r["lr"] > 1e-2) for r in out["runs"])
    rows = {r["signal"]: r for r in out["rows"]}
    ratio = rows["transformer.h.0/update_ratio"]
    assert ratio["direction"] == "above" and ratio["bad_caught"] == ratio["bad_runs"] == 4
    assert ratio["false_alarms"] == 0 and ratio["good_runs"] == 4
    # fitted on seed 0's good runs only (their highest value, 0.01, plus 5 %)
    assert math.isclose(ratio["threshold"], 0.01 * 1.05)
    assert ratio["lead_median"] is not None and ratio["lead_median"] > 0
    assert "transformer.h.0/update_ratio" in out["useful"]
    assert "transformer.h.0/act_std" not in out["useful"]  # never separates the runs


def test_a_run_that_ends_non_finite_goes_wrong() -> None:
    runs = [_run(lr, seed, bad=lr > 1e-2) for seed in (0, 1) for lr in (5e-2, 1e-3)]
    runs[0]["final_eval_loss"] = math.nan
    out = hi.analyse(runs, calibration_seed=0)
    assert next(r for r in out["runs"] if r["lr"] == 5e-2 and r["seed"] == 0)["bad"]
