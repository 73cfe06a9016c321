"""Module operations: the only things ``update_module`` can do to a model.

A module is named by its path (``transformer.h.0.attn.attn_dropout``). The operations are
``reset_parameters``, ``freeze``, ``unfreeze`` and ``set_attribute`` of an attribute on
the whitelist below. Nothing is looked up by a user-given name with ``getattr`` except
through these tables, so no arbitrary method can be called or attribute written.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ray_interactive.core.commands import UpdateModule

# (module class, attribute) -> (low, high) inclusive bounds; the value is a float.
_DROPOUT = nn.modules.dropout._DropoutNd
_BATCHNORM = nn.modules.batchnorm._NormBase
ATTRIBUTE_WHITELIST: list[tuple[type[nn.Module], str, float, float]] = [
    (_DROPOUT, "p", 0.0, 1.0),
    (nn.LayerNorm, "eps", 1e-12, 1.0),
    (nn.GroupNorm, "eps", 1e-12, 1.0),
    (_BATCHNORM, "eps", 1e-12, 1.0),
    (_BATCHNORM, "momentum", 0.0, 1.0),
    (nn.LeakyReLU, "negative_slope", 0.0, 1.0),
]
if hasattr(nn, "RMSNorm"):
    ATTRIBUTE_WHITELIST.append((nn.RMSNorm, "eps", 1e-12, 1.0))

ModuleView = dict[str, Any]


def settable_attributes(module: nn.Module) -> dict[str, tuple[float, float]]:
    """Whitelisted attributes of ``module`` with their bounds."""
    out = {}
    for cls, attr, lo, hi in ATTRIBUTE_WHITELIST:
        if isinstance(module, cls) and isinstance(getattr(module, attr, None), (int, float)):
            out[attr] = (lo, hi)
    return out


def _resettable(module: nn.Module) -> bool:
    return any(callable(getattr(m, "reset_parameters", None)) for m in module.modules())


def describe_modules(model: nn.Module) -> dict[str, ModuleView]:
    """Plain description of every named submodule: type, parameters, settable attributes."""
    views: dict[str, ModuleView] = {}
    for path, module in model.named_modules():
        if not path:
            continue
        params = list(module.parameters())
        attrs = settable_attributes(module)
        views[path] = {
            "type": type(module).__name__,
            "params": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "attributes": {a: float(getattr(module, a)) for a in attrs},
            "bounds": {a: list(b) for a, b in attrs.items()},
            "resettable": _resettable(module),
        }
    return views


def validate_module_op(modules: dict[str, ModuleView], cmd: UpdateModule) -> None:
    """Raise ``ValueError`` if ``cmd`` cannot be applied to the described model."""
    view = modules.get(cmd.module)
    if view is None:
        close = [p for p in modules if cmd.module and cmd.module.split(".")[-1] in p][:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ValueError(f"no module named {cmd.module!r} in the model{hint}")
    if cmd.op in ("freeze", "unfreeze") and view["params"] == 0:
        raise ValueError(f"module {cmd.module!r} ({view['type']}) has no parameters to {cmd.op}")
    if cmd.op == "reset_parameters" and not view["resettable"]:
        raise ValueError(f"module {cmd.module!r} ({view['type']}) has no reset_parameters")
    if cmd.op == "set_attribute":
        bounds = view["bounds"].get(cmd.attribute)
        if bounds is None:
            allowed = ", ".join(view["bounds"]) or "none"
            raise ValueError(
                f"attribute {cmd.attribute!r} of {cmd.module!r} ({view['type']}) cannot be set; "
                f"settable: {allowed}"
            )
        v = cmd.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{cmd.attribute} must be a finite number, not {v!r}")
        lo, hi = bounds
        if not lo <= v <= hi:
            raise ValueError(f"{cmd.attribute} must be in [{lo:g}, {hi:g}], not {v:g}")


def apply_module_op(model: nn.Module, optimizer: torch.optim.Optimizer, cmd: UpdateModule) -> str:
    """Apply a validated ``cmd``; return a short description of what changed."""
    module = model.get_submodule(cmd.module)
    params = list(module.parameters())
    if cmd.op == "freeze":
        mine = {id(p) for p in params}
        if not any(p.requires_grad and id(p) not in mine for p in model.parameters()):
            raise ValueError(f"freezing {cmd.module!r} would leave no trainable parameters; unfreeze something first")
    if cmd.op == "freeze" or cmd.op == "unfreeze":
        for p in params:
            p.requires_grad_(cmd.op == "unfreeze")
            if cmd.op == "freeze":
                p.grad = None
        return f"{cmd.op} {sum(p.numel() for p in params)} parameters"
    if cmd.op == "reset_parameters":
        n = 0
        with torch.no_grad():
            for m in module.modules():
                reset = getattr(m, "reset_parameters", None)
                if callable(reset):
                    reset()
                    n += 1
        # Fresh weights with stale Adam moments would take huge first steps: drop them.
        for p in params:
            optimizer.state.pop(p, None)
        return f"reset {n} submodules, cleared optimizer state of {len(params)} tensors"
    assert cmd.attribute is not None and cmd.value is not None
    if cmd.attribute not in settable_attributes(module):  # re-check against the live module
        raise ValueError(f"attribute {cmd.attribute!r} of {cmd.module!r} cannot be set")
    old = getattr(module, cmd.attribute)
    setattr(module, cmd.attribute, float(cmd.value))
    return f"{cmd.attribute}: {old:g} -> {float(cmd.value):g}"
