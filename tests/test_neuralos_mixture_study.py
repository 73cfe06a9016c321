"""The NeuralOS mixture study (issue 25, open question 3): live rows split by task, the mixture
agent's own policy steering a plain loop's buffer from validation sessions, and the study's files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neuralos_example.data import FREQUENT_TASKS, sessions_table, user_session
from neuralos_example.experiment import split_by_task
from neuralos_example.mixture_study import VALIDATION_SEED, main, task_shares


def test_live_rows_split_by_task_lose_none_and_keep_each_task_apart() -> None:
    live = sessions_table([user_session(200_000 + i) for i in range(6)])
    parts = split_by_task(live)
    assert sum(p.num_rows for p in parts.values()) == live.num_rows
    for t in FREQUENT_TASKS:
        assert set(parts[f"live_{t}"].column("task").to_pylist()) == {t}
    assert not set(parts.get("live_other", live.slice(0, 0)).column("task").to_pylist()) & set(FREQUENT_TASKS)


def test_task_shares_are_of_the_task_sources_only() -> None:
    shares = task_shares({"base": 1.0, "live_create_folder": 0.3, "live_open_browser": 0.1, "live_other": 0.6})
    assert shares == pytest.approx({"create_folder": 0.75, "open_browser": 0.25})


def test_validation_sessions_are_not_the_test_sessions() -> None:
    from neuralos_example.evaluation import heldout

    for t in FREQUENT_TASKS:
        val = {s.seed for s in heldout(t, 4, seed=VALIDATION_SEED)}
        assert not val & {s.seed for s in heldout(t, 24)}


@pytest.mark.slow
def test_the_study_steers_the_mixture_toward_the_lagging_task_and_writes_its_files(tmp_path: Path) -> None:
    out = tmp_path / "mixture"
    assert main(["--steps", "6", "--steer-every", "3", "--seeds", "1", "--users", "4", "--base-rows", "40",
                 "--sessions", "1", "--val-sessions", "2", "--warmup", "2", "--threads", "1", "--out", str(out)]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert set(doc["results"]) == {"fixed", "reshuffled", "steered"}
    (log,) = doc["steering"]
    assert [e["step"] for e in log] == [3]
    e = log[0]
    ev = {t: e["evals"][f"eval/{t}/success"] for t in FREQUENT_TASKS}
    before, after = task_shares(e["mixture_before"]), task_shares(e["mixture"])
    if ev["create_folder"] != ev["open_browser"]:  # the lagging task gains weight; base and the rest keep theirs
        lag = min(ev, key=lambda t: ev[t])
        assert after[lag] > before[lag]
        assert e["mixture"]["base"] == e["mixture_before"]["base"]
    else:
        assert e["mixture"] == e["mixture_before"]
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "steered - fixed" in out.with_suffix(".md").read_text()
    # one arm again, the others kept from the file; other settings are refused
    args = ["--steps", "6", "--steer-every", "3", "--seeds", "1", "--users", "4", "--base-rows", "40", "--sessions", "1",
            "--val-sessions", "2", "--warmup", "2", "--threads", "1", "--out", str(out)]
    assert main([*args, "--arms", "reshuffled", "--merge"]) == 0
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["runs"]["fixed"] == doc["runs"]["fixed"] and again["steering"] == doc["steering"]
    assert "Kept from the run of" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit, match="other settings"):
        main([*args[:-2], "--out", str(out), "--arms", "fixed", "--merge", "--lr", "1e-3"])
