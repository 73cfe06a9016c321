"""Per-module health indicators: the groups, each value against a hand computation, and
nothing attached between samples."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ray_interactive.core.module_health import ModuleHealth, module_groups


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def step(model: nn.Module, opt: torch.optim.Optimizer, health: ModuleHealth, n: int, x: torch.Tensor) -> dict:
    health.arm_for(n)
    model(x).pow(2).mean().backward()
    health.grads_ready()
    opt.step()
    opt.zero_grad()
    return {k: float(v) for k, v in health.collect().items()}


def test_groups_cut_the_module_tree_at_the_deepest_level_that_fits() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_layer=2, n_embd=16, n_head=2, n_positions=16))
    assert list(module_groups(gpt, 8)) == ["transformer.wte", "transformer.wpe", "transformer.h.0",
                                           "transformer.h.1", "transformer.ln_f"]
    assert list(module_groups(gpt, 1)) == ["transformer"]
    assert list(module_groups(mlp())) == ["0", "2"]


def test_each_indicator_matches_a_hand_computation() -> None:
    model = mlp()
    with torch.no_grad():  # units 0-3 of the hidden layer can never fire: bias -100, weights 0
        model[0].weight[:4] = 0.0
        model[0].bias[:4] = -100.0
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    health = ModuleHealth(model, every=3)
    x = torch.randn(64, 4)
    assert step(model, opt, health, 1, x) == {} and step(model, opt, health, 2, x) == {}
    before = [p.detach().clone() for p in model[2].parameters()]
    hidden = model[1](model[0](x))
    model(x).pow(2).mean().backward()
    grad = torch.cat([p.grad.flatten() for p in model[2].parameters()]).norm()
    opt.zero_grad()
    out = step(model, opt, health, 3, x)
    assert set(out) == {f"health/{g}/{m}" for g in ("0", "2") for m in ("update_ratio", "grad_norm", "act_std")} | {
        "health/1/dead"}  # the ReLU is in no group: it counts under its own name
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model[2].parameters(), before)]).norm()
    base = torch.cat([b.flatten() for b in before]).norm()
    assert out["health/2/update_ratio"] == pytest.approx(float(delta / base), rel=1e-5)
    assert out["health/2/grad_norm"] == pytest.approx(float(grad), rel=1e-5)
    assert out["health/0/act_std"] == pytest.approx(float(model[0](x).detach().std()), rel=0.2)
    assert out["health/1/dead"] == pytest.approx(float((hidden.abs().amax(0) <= 1e-6).float().mean()))
    assert out["health/1/dead"] >= 0.5


def test_nothing_is_attached_between_samples_and_a_sample_can_be_dropped() -> None:
    model = mlp()
    health = ModuleHealth(model, every=10)
    health.arm_for(5)
    assert not health.armed and all(not m._forward_hooks for m in model.modules())
    health.arm_for(10)
    assert health.armed and any(m._forward_hooks for m in model.modules())
    health.disarm()
    assert not health.armed and all(not m._forward_hooks for m in model.modules())
    assert health.collect() == {}
    with pytest.raises(ValueError, match="at least 1"):
        ModuleHealth(model, every=0)
