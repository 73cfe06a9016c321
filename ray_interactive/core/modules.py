"""The model as commands see it: every named module, its parameters and the attributes
that may be set (:func:`attribute_whitelist`; :mod:`~ray_interactive.core.commands.kinds.update_module`
is the only thing that changes a module).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where modules are: the controller only reads their descriptions
    from torch import nn


@functools.cache
def attribute_whitelist() -> tuple[tuple[type[nn.Module], str, float, float], ...]:
    """(module class, attribute, low, high): the only attributes ``update_module`` may set
    (inclusive bounds; the value is a float)."""
    from torch import nn

    dropout, batchnorm = nn.modules.dropout._DropoutNd, nn.modules.batchnorm._NormBase
    rows = [
        (dropout, "p", 0.0, 1.0),
        (nn.LayerNorm, "eps", 1e-12, 1.0),
        (nn.GroupNorm, "eps", 1e-12, 1.0),
        (batchnorm, "eps", 1e-12, 1.0),
        (batchnorm, "momentum", 0.0, 1.0),
        (nn.LeakyReLU, "negative_slope", 0.0, 1.0),
    ]
    if hasattr(nn, "RMSNorm"):
        rows.append((nn.RMSNorm, "eps", 1e-12, 1.0))
    return tuple(rows)


ModuleView = dict[str, Any]


def settable_attributes(module: nn.Module) -> dict[str, tuple[float, float]]:
    """Whitelisted attributes of ``module`` with their bounds."""
    out = {}
    for cls, attr, lo, hi in attribute_whitelist():
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
