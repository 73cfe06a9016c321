"""The control UI's agent panel without a run: what each policy's fields accept, and how
the journal table and the lookahead figure read the agents' journals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_interactive.ui.agents_panel import POLICIES, _options, journal_table, lookahead_figure


def test_each_policy_takes_its_own_fields_and_bad_ones_are_named() -> None:
    assert _options("rule", "x", None, None) == {}  # fields of other policies are not read
    assert _options("lookahead", 20, "0.5, 1 2", "") == {"horizon": 20, "factors": [0.5, 1.0, 2.0]}
    assert _options("llm-check", "10", None, None) == {"horizon": 10}
    assert _options("mixture", 1, "", "base=eval/base/loss; extra = eval/extra/loss") == {
        "track": {"base": "eval/base/loss", "extra": "eval/extra/loss"}}
    for policy, horizon, factors, track, why in [
        ("ppo", 1, "", "", "unknown policy 'ppo'"),
        ("lookahead", 0, "0.5 1", "", "horizon"),
        ("lookahead", 5, "0.5 fast", "", "lr factors are numbers"),
        ("lookahead", 5, "0.5 -1", "", "positive number"),
        ("lookahead", 5, "1", "", "at least two"),
        ("mixture", 5, "", "base", "SOURCE=METRIC"),
        ("mixture", 5, "", "base=eval/base/loss", "two"),
    ]:
        with pytest.raises(ValueError, match=why):
            _options(policy, horizon, factors, track)
    assert set(POLICIES) == {"rule", "llm", "llm-check", "lookahead", "mixture"}


def test_the_rule_agent_takes_update_ratio_ceilings_and_refuses_bad_ones() -> None:
    assert _options("rule", 1, "", "", "transformer.h.0=0.008, h.1 = 0.01") == {
        "ceiling": {"transformer.h.0": 0.008, "h.1": 0.01}}
    assert _options("lookahead", 5, "0.5 1", "", "h.0=0.01") == {"horizon": 5, "factors": [0.5, 1.0]}  # not read
    for bad, why in [("h.0", "MODULE=RATIO"), ("h.0=fast", "MODULE=RATIO"), ("h.0=-1", "positive number"),
                     ("h.0=nan", "positive number")]:
        with pytest.raises(ValueError, match=why):
            _options("rule", 1, "", "", bad)


def test_the_journal_table_and_figure_show_what_each_candidate_scored_and_what_was_kept(tmp_path: Path) -> None:
    trials = [{"move": "lr-x0.5", "score": 1.2, "error": None}, {"move": "keep", "score": 1.5, "error": None},
              {"move": "lr-x2", "score": None, "error": "RuntimeError: lost"}]
    entries = {
        "agent-lookahead.jsonl": [{"time": 1.0, "agent": "lookahead", "kind": "lookahead", "step": 40,
                                   "trials": trials, "chosen": "lr-x0.5", "explored_steps": 20,
                                   "rationale": "every 40 steps: ... continuing with lr-x0.5"}],
        "agent-llm.jsonl": [{"time": 2.0, "agent": "llm", "step": 90, "rationale": "half: noisy", "sent": [],
                             "refused": [], "tested": {"trials": trials[:2], "chosen": "keep", "explored_steps": 20}}],
    }
    for name, lines in entries.items():
        (tmp_path / name).write_text("".join(json.dumps(e) + "\n" for e in lines))
    table = journal_table(tmp_path)
    assert list(table["agent"]) == ["llm", "lookahead"]  # newest first
    assert table["tried on branches (score)"][1] == "lr-x0.5 1.2, keep 1.5, lr-x2 failed -> kept lr-x0.5 (20 steps explored)"
    assert table["tried on branches (score)"][0].endswith("-> kept keep (20 steps explored)")
    fig = lookahead_figure(tmp_path)
    by_name = {t["name"]: t for t in fig["data"]}
    assert by_name["lr-x0.5"]["x"] == [40] and by_name["lr-x0.5"]["y"] == [1.2]
    assert "lr-x2" not in by_name  # failed: no score to draw
    assert by_name["kept"]["x"] == [40] and by_name["kept"]["y"] == [1.2]  # a runner's test is its lookahead's entry
    assert "ringed: kept" in fig["layout"]["title"]["text"]
    assert "no move tried" in lookahead_figure(tmp_path / "nothing")["layout"]["title"]["text"]
