"""The lookahead agent's pure parts: the candidate moves and the choice among tried ones."""

from __future__ import annotations

import math

import pytest

from ray_interactive.agents.lookahead import Move, Trial, choose, lr_moves


def trial(name: str, score: float, keeps: bool = False, error: str | None = None) -> Trial:
    move = Move("keep") if keeps else Move(name, ({"kind": "update_optimizer", "params": {"lr": 1.0}},))
    return Trial(move, f"la1-{name}", end_checkpoint=f"la1-{name}@20", score=score, steps=10, error=error)


def test_lr_moves_scale_the_lr_and_keep_is_the_move_without_commands() -> None:
    moves = lr_moves(0.01, (0.5, 1.0, 2.0), clip=1.0)
    assert [m.name for m in moves] == ["lr-x0.5", "keep", "lr-x2", "clip-1"]
    assert moves[0].commands[0]["params"]["lr"] == pytest.approx(0.005)
    assert moves[1].keeps and not moves[0].keeps
    assert moves[3].commands[0] == {"kind": "set_grad_clip", "max_norm": 1.0}
    with pytest.raises(ValueError, match="not a positive number"):
        lr_moves(math.nan)
    with pytest.raises(ValueError, match="factor"):
        lr_moves(0.1, (0.0,))


def test_choose_takes_the_lowest_score_and_keep_wins_within_the_margin() -> None:
    trials = [trial("lr-x0.5", 0.50), trial("keep", 0.52, keeps=True), trial("lr-x2", 0.9)]
    assert choose(trials).move.name == "lr-x0.5"
    assert choose(trials, margin=0.05).move.name == "keep"  # 0.50 is not 5 % better than 0.52
    assert choose(trials, margin=0.01).move.name == "lr-x0.5"


def test_choose_skips_failed_and_unscored_trials() -> None:
    trials = [trial("lr-x0.5", math.nan), trial("lr-x2", 0.1, error="RuntimeError: lost"), trial("keep", 0.7, keeps=True)]
    assert choose(trials).move.name == "keep"
    assert choose([trial("a", math.inf), trial("b", math.nan)]) is None
    assert choose([]) is None
