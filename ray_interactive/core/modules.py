"""The model as commands see it: every named module, its parameters and the attributes
that may be set (the whitelist below; :mod:`~ray_interactive.core.commands.kinds.update_module`
is the only thing that changes a module).
"""

from __future__ import annotations

from typing import Any

from torch import nn

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
