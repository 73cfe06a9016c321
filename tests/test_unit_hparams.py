"""Validation and application of optimizer hyperparameter updates against real optimizers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ray_interactive.core.hparams import apply_update, describe_optimizer, validate_update


@pytest.fixture
def adamw() -> torch.optim.AdamW:
    return torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=1e-3, weight_decay=0.01)


@pytest.fixture
def sgd() -> torch.optim.SGD:
    return torch.optim.SGD(nn.Linear(3, 2).parameters(), lr=1e-2, momentum=0.9)


@pytest.fixture
def named_groups() -> torch.optim.AdamW:
    m = nn.Linear(3, 2)
    return torch.optim.AdamW(
        [
            {"params": [m.weight], "name": "decay", "weight_decay": 0.1},
            {"params": [m.bias], "name": "no_decay", "weight_decay": 0.0},
        ],
        lr=1e-3,
    )


def reject(opt: torch.optim.Optimizer, params: dict, group: str | None = None) -> str:
    with pytest.raises(ValueError) as e:
        validate_update(describe_optimizer(opt), params, group)
    return str(e.value)


def test_describe_optimizer_lists_settable_hparams_not_structural_keys(adamw: torch.optim.AdamW, named_groups) -> None:
    (view,) = describe_optimizer(adamw)
    assert view["name"] == "group0"
    hp = view["hparams"]
    assert hp["lr"] == 1e-3 and hp["betas"] == [0.9, 0.999] and hp["weight_decay"] == 0.01
    assert "params" not in hp and "amsgrad" not in hp and "foreach" not in hp
    assert [g["name"] for g in describe_optimizer(named_groups)] == ["decay", "no_decay"]


def test_unknown_key_is_rejected_with_the_known_keys(adamw: torch.optim.AdamW) -> None:
    msg = reject(adamw, {"momentum": 0.9})
    assert "unknown hyperparameter 'momentum'" in msg
    assert "betas" in msg and "lr" in msg


def test_structural_key_is_rejected(adamw: torch.optim.AdamW) -> None:
    assert "'amsgrad' is not a hyperparameter" in reject(adamw, {"amsgrad": True})
    assert "'params' is not a hyperparameter" in reject(adamw, {"params": []})


def test_wrong_type_is_rejected(adamw: torch.optim.AdamW) -> None:
    assert reject(adamw, {"lr": "1e-3"}) == "lr must be a number, got '1e-3'"
    assert reject(adamw, {"weight_decay": {"v": 1}}) == "weight_decay must be a number, got an object with 1 key(s)"
    assert reject(adamw, {"lr": None}) == "lr must be a number, got null"  # was "not NoneType None"


def test_bool_for_a_float_is_rejected(adamw: torch.optim.AdamW) -> None:
    assert reject(adamw, {"lr": True}) == "lr must be a number, got true"


def test_number_for_a_bool_is_rejected(sgd: torch.optim.SGD) -> None:
    assert reject(sgd, {"nesterov": 1}) == "nesterov must be true or false, got 1"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lr": 0}, "lr must be in (0, 10], not 0"),
        ({"lr": 11.0}, "lr must be in (0, 10], not 11"),
        ({"lr": -1e-3}, "lr must be in (0, 10], not -0.001"),
        ({"weight_decay": -0.1}, "weight_decay must be in [0, 10], not -0.1"),
        ({"betas": [0.9, 1.0]}, "betas[1] must be in [0, 1), not 1"),
        ({"eps": 0.0}, "eps must be in (0, 1], not 0"),
    ],
)
def test_out_of_bounds_is_rejected(adamw: torch.optim.AdamW, params: dict, message: str) -> None:
    assert reject(adamw, params) == message


def test_momentum_bounds_for_sgd(sgd: torch.optim.SGD) -> None:
    assert reject(sgd, {"momentum": 1.5}) == "momentum must be in [0, 1], not 1.5"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_is_rejected(adamw: torch.optim.AdamW, bad: float) -> None:
    assert reject(adamw, {"lr": bad}) == f"lr must be finite, not {bad}"
    assert reject(adamw, {"betas": [0.9, bad]}) == f"betas[1] must be finite, not {bad}"


@pytest.mark.parametrize("bad", [[0.9], [0.9, 0.99, 0.999], 0.9, "ab"])
def test_wrong_tuple_length_or_shape_is_rejected(adamw: torch.optim.AdamW, bad) -> None:  # noqa: ANN001
    assert reject(adamw, {"betas": bad}).startswith("betas must be a list of 2 numbers, not ")


def test_unknown_group_is_rejected_naming_the_groups(named_groups: torch.optim.AdamW) -> None:
    assert reject(named_groups, {"lr": 1e-4}, group="nope") == "no param group named 'nope'; groups: decay, no_decay"


def test_empty_update_is_rejected(adamw: torch.optim.AdamW) -> None:
    assert reject(adamw, {}) == "no hyperparameters given"


def test_int_is_accepted_for_a_float_and_converted(adamw: torch.optim.AdamW, sgd: torch.optim.SGD) -> None:
    targets, clean = validate_update(describe_optimizer(adamw), {"lr": 1, "weight_decay": 0}, None)
    assert targets == [0]
    assert clean == {"lr": 1.0, "weight_decay": 0.0}
    assert all(type(v) is float for v in clean.values())
    # SGD's dampening/weight_decay default to int 0; they still take fractional values
    _, clean = validate_update(describe_optimizer(sgd), {"dampening": 0.5, "weight_decay": 1e-4}, None)
    assert clean == {"dampening": 0.5, "weight_decay": 1e-4}


def test_list_values_become_tuples(adamw: torch.optim.AdamW) -> None:
    _, clean = validate_update(describe_optimizer(adamw), {"betas": [0.8, 0.95]}, None)
    assert clean == {"betas": (0.8, 0.95)}


def test_integer_hparams_take_whole_numbers_only() -> None:
    groups = [{"name": "g", "hparams": {"n_steps": 3}}]
    assert validate_update(groups, {"n_steps": 4.0}, None)[1] == {"n_steps": 4}
    assert type(validate_update(groups, {"n_steps": 4.0}, None)[1]["n_steps"]) is int
    with pytest.raises(ValueError, match=r"^n_steps must be an integer, not 2.5$"):
        validate_update(groups, {"n_steps": 2.5}, None)


def test_group_targets(named_groups: torch.optim.AdamW) -> None:
    groups = describe_optimizer(named_groups)
    assert validate_update(groups, {"weight_decay": 0.2}, None)[0] == [0, 1]
    assert validate_update(groups, {"weight_decay": 0.2}, "no_decay")[0] == [1]


def test_apply_update_writes_values_but_not_lr(named_groups: torch.optim.AdamW) -> None:
    groups = describe_optimizer(named_groups)
    targets, clean = validate_update(groups, {"lr": 5.0, "weight_decay": 0.3, "betas": [0.8, 0.95], "eps": 1e-6}, "no_decay")
    apply_update(named_groups, targets, clean)
    g0, g1 = named_groups.param_groups
    assert g1["weight_decay"] == 0.3 and tuple(g1["betas"]) == (0.8, 0.95) and g1["eps"] == 1e-6
    assert g1["lr"] == 1e-3  # lr belongs to the schedule
    assert g0["weight_decay"] == 0.1 and tuple(g0["betas"]) == (0.9, 0.999) and g0["eps"] == 1e-8
    # the optimizer still steps with the new values
    for p in (p for g in named_groups.param_groups for p in g["params"]):
        p.grad = torch.ones_like(p)
    named_groups.step()


def test_apply_update_to_sgd_momentum(sgd: torch.optim.SGD) -> None:
    targets, clean = validate_update(describe_optimizer(sgd), {"momentum": 0.5, "nesterov": True}, None)
    apply_update(sgd, targets, clean)
    assert sgd.param_groups[0]["momentum"] == 0.5
    assert sgd.param_groups[0]["nesterov"] is True
    assert describe_optimizer(sgd)[0]["hparams"]["momentum"] == 0.5


@pytest.mark.parametrize("key", ["maximize", "decoupled_weight_decay", "amsgrad", "foreach"])
def test_flags_that_change_what_the_optimizer_is_cannot_be_set(key: str) -> None:
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="not a hyperparameter that can be changed"):
        validate_update(describe_optimizer(opt), {key: True}, None)
