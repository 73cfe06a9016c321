"""Optimizer hyperparameters: describe the live optimizer, validate and apply changes.

Validation is a pure function of a plain description of the param groups (what
:func:`describe_optimizer` returns), so the controller checks a command at submission
against the trainer's latest description, and the trainer checks it again against the
live optimizer when it applies it. Keys that do not exist are rejected, never added.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

from ray_interactive.core.plain import shown

if TYPE_CHECKING:
    import torch

#: Param-group keys that are not hyperparameters, whose change would break the
#: optimizer's state (``amsgrad`` adds a state tensor), or that change what the optimizer
#: is rather than how fast it goes (``maximize`` ascends the loss; AdamW without
#: ``decoupled_weight_decay`` is Adam with L2).
STRUCTURAL_KEYS = frozenset(
    {
        "params",
        "name",
        "foreach",
        "fused",
        "capturable",
        "differentiable",
        "amsgrad",
        "initial_lr",
        "maximize",
        "decoupled_weight_decay",
    }
)

#: Sane bounds of well-known hyperparameters: (low, low inclusive, high, high inclusive).
BOUNDS: dict[str, tuple[float, bool, float, bool]] = {
    "lr": (0.0, False, 10.0, True),
    "weight_decay": (0.0, True, 10.0, True),
    "eps": (0.0, False, 1.0, True),
    "momentum": (0.0, True, 1.0, True),
    "dampening": (0.0, True, 1.0, True),
    "betas": (0.0, True, 1.0, False),
    "alpha": (0.0, True, 1.0, True),
    "rho": (0.0, True, 1.0, True),
    "lr_decay": (0.0, True, 10.0, True),
    "initial_accumulator_value": (0.0, True, 1e6, True),
}
GENERIC_BOUND = 1e6

GroupView = dict[str, Any]  # {"name": str, "hparams": {key: value}}


def _is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor (without importing torch: the controller describes
    optimizers it never holds, and starts faster without it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def group_name(group: dict[str, Any], index: int) -> str:
    """The name of a param group: its ``name`` key, else ``group<index>``."""
    name = group.get("name")
    return name if isinstance(name, str) else f"group{index}"


def _plain(value: Any) -> Any:
    if _is_tensor(value) and value.numel() == 1:
        return value.item()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def describe_optimizer(opt: torch.optim.Optimizer) -> list[GroupView]:
    """Plain description of every param group: its name and settable hyperparameters."""
    views = []
    for i, g in enumerate(opt.param_groups):
        hp = {
            k: _plain(v)
            for k, v in g.items()
            if k not in STRUCTURAL_KEYS and isinstance(_plain(v), (bool, int, float, list))
        }
        views.append({"name": group_name(g, i), "hparams": hp})
    return views


def _check_number(key: str, value: Any, live: Any, where: str) -> float | int | bool:
    if isinstance(live, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {shown(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number, got {shown(value)}")
    if not math.isfinite(value):
        raise ValueError(f"{where} must be finite, not {value}")
    is_float = isinstance(live, float) or key in BOUNDS  # a user may have written wd=0
    if not is_float and not isinstance(value, int):
        if not float(value).is_integer():
            raise ValueError(f"{where} must be an integer, not {value}")
        value = int(value)
    lo, lo_inc, hi, hi_inc = BOUNDS.get(key, (-GENERIC_BOUND, True, GENERIC_BOUND, True))
    if value < lo or (value == lo and not lo_inc) or value > hi or (value == hi and not hi_inc):
        lb, hb = ("[" if lo_inc else "("), ("]" if hi_inc else ")")
        raise ValueError(f"{where} must be in {lb}{lo:g}, {hi:g}{hb}, not {value:g}")
    return float(value) if is_float else value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def target_groups(groups: list[GroupView], group: str | None) -> list[int]:
    """Indices of the param groups a command names (``None``: all); ``ValueError`` if none has that name."""
    names = [g["name"] for g in groups]
    if group is None:
        return list(range(len(groups)))
    if group in names:
        return [names.index(group)]
    raise ValueError(f"no param group named {group!r}; groups: {', '.join(names)}")


def validate_update(
    groups: list[GroupView], params: dict[str, Any], group: str | None
) -> tuple[list[int], dict[str, Any]]:
    """Check an ``update_optimizer`` against the groups; return target indices and values.

    Raises ``ValueError`` with a message that names the key and the problem.
    """
    targets = target_groups(groups, group)
    if not params:
        raise ValueError("no hyperparameters given")
    clean: dict[str, Any] = {}
    for key, value in params.items():
        if key in STRUCTURAL_KEYS:
            raise ValueError(f"{key!r} is not a hyperparameter that can be changed while training")
        live = groups[targets[0]]["hparams"].get(key)
        if live is None or any(key not in groups[t]["hparams"] for t in targets):
            known = sorted(groups[targets[0]]["hparams"])
            raise ValueError(
                f"unknown hyperparameter {key!r} for this optimizer; it has: {', '.join(known)}"
            )
        if isinstance(live, list):
            if not isinstance(value, (list, tuple)) or len(value) != len(live):
                raise ValueError(f"{key} must be a list of {len(live)} numbers, not {_short(value)}")
            clean[key] = tuple(
                _check_number(key, v, lv, f"{key}[{i}]") for i, (v, lv) in enumerate(zip(value, live))
            )
        else:
            clean[key] = _check_number(key, value, live, key)
    return targets, clean


def apply_update(opt: torch.optim.Optimizer, targets: list[int], values: dict[str, Any]) -> None:
    """Write validated values into the live param groups (``lr`` is set by the schedule)."""
    for t in targets:
        g = opt.param_groups[t]
        for key, value in values.items():
            if key == "lr":
                continue
            live = g[key]
            if _is_tensor(live):
                live.fill_(value)
            elif isinstance(live, list):
                g[key] = list(value)
            else:
                g[key] = value
