"""The case studies' task: each optimizer arm trains a step and evaluates (schedule-free at
its averaged weights, then back to training mode)."""

from __future__ import annotations

import math

import pytest
import torch

from ray_interactive.examples.case_study import CaseStudyLM


@pytest.mark.parametrize("optimizer", ["adamw", "schedulefree", "prodigy"])
def test_each_optimizer_trains_and_evaluates(optimizer: str) -> None:
    torch.manual_seed(0)
    task = CaseStudyLM(optimizer=optimizer, context=16, n_layer=1, n_embd=32, n_head=2, eval_tokens=512,
                       max_train_tokens=20_000)
    model = task.build_model()
    opt = task.build_optimizer(model, 1.0 if optimizer == "prodigy" else 1e-3)
    assert [g["name"] for g in opt.param_groups] == ["decay", "no_decay"]
    table = task.data_sources()[0].table
    batch = task.collate(table.slice(0, 8), torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    task.loss(model, batch).backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    model.eval()
    out = task.evaluate(model, torch.device("cpu"))
    assert math.isfinite(out["loss"])
    if optimizer == "schedulefree":
        assert all(g["train_mode"] for g in opt.param_groups)  # back to training after the evaluation


def test_an_unknown_optimizer_is_refused() -> None:
    with pytest.raises(ValueError, match="adamw, schedulefree or prodigy"):
        CaseStudyLM(optimizer="sgd")  # type: ignore[arg-type]
