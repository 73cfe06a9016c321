"""``update_module``: operate on one module of the model, named by its path.

The operations are ``reset_parameters``, ``freeze``, ``unfreeze`` and ``set_attribute`` of
an attribute on :func:`~ray_interactive.core.modules.attribute_whitelist`. Nothing is
looked up by a user-given name except through that table and ``get_submodule``, so no
arbitrary method can be called or attribute written.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from ray_interactive.core.commands.base import CommandBase, RunView
from ray_interactive.core.modules import settable_attributes
from ray_interactive.core.plain import shown

if TYPE_CHECKING:
    import torch

    from ray_interactive.core.steering import Steering


class UpdateModule(CommandBase):
    """Operate on one module of the model, named by its path (``transformer.h.0.attn``).

    ``op`` is one of ``reset_parameters``, ``set_attribute`` (a whitelisted attribute such
    as dropout ``p``), ``freeze`` or ``unfreeze``. Nothing else can be called or set.
    """

    kind: Literal["update_module"] = "update_module"
    module: str = Field(max_length=512, pattern=r"^[\w.\-]+$", description="the module's path (transformer.h.0.attn)")
    op: Literal["reset_parameters", "set_attribute", "freeze", "unfreeze"] = Field(description="what to do to it")
    attribute: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
                                  description="set_attribute: which (dropout p, norm eps, ...)")
    value: float | int | bool | None = Field(default=None, description="set_attribute: the new value")

    label: ClassVar[str] = "Apply to module"
    section: ClassVar[str] = "model"
    example: ClassVar[str] = "module=transformer.h.0 op=freeze"
    needs_description: ClassVar[bool] = True

    @model_validator(mode="after")
    def _attribute_pair(self) -> UpdateModule:
        if self.op == "set_attribute":
            if self.attribute is None or self.value is None:
                raise ValueError("set_attribute needs both 'attribute' and 'value'")
        elif self.attribute is not None or self.value is not None:
            raise ValueError(f"{self.op} takes no 'attribute' or 'value'")
        return self

    def check(self, view: RunView) -> UpdateModule:
        modules = view.modules or {}
        validate_module_op(modules, self)
        if self.op == "freeze":
            frozen = [c.module for c in view.pending_of(UpdateModule) if c.op == "freeze"]  # type: ignore[attr-defined]
            check_something_trains(modules, view.trainable, [*frozen, self.module])
        return self

    def apply(self, run: Steering) -> str:
        validate_module_op(run.modules(), self)
        if run.saved_names is not None and self.op in ("unfreeze", "reset_parameters"):
            prefix = f"{self.module}." if self.module else ""
            base = [n for n, _ in run.model.named_parameters() if n.startswith(prefix) and n not in run.saved_names]
            if base:
                raise ValueError(
                    f"{self.op} of {self.module!r} would change the fixed base ({len(base)} tensor(s), e.g. "
                    f"{base[0]}): this run saves and publishes only what trained from its start "
                    "(saved_weights='trainable')")
        message = apply_module_op(run.model, run.optimizer, self)
        run.model_changed()
        return message


def validate_module_op(modules: dict[str, dict[str, Any]], cmd: UpdateModule) -> None:
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
            raise ValueError(f"{cmd.attribute} must be a finite number, got {shown(v)}")
        lo, hi = bounds
        if not lo <= v <= hi:
            raise ValueError(f"{cmd.attribute} must be in [{lo:g}, {hi:g}], not {v:g}")


def check_something_trains(modules: dict[str, dict[str, Any]], trainable: int | None, frozen: list[str]) -> None:
    """Refuse freezes that, together, would leave no trainable parameter: the last one of
    ``frozen`` is the new command, the others are accepted freezes not yet applied.

    Counts come from the trainer's description of the model; a module nested in another
    frozen one adds nothing. (Parameters shared between two separate modules can make
    this over-count; the trainer checks exactly when it applies a freeze.)"""
    if not trainable:
        return
    paths = set(frozen)
    outer = [p for p in paths if not any(p != q and p.startswith(q + ".") for q in paths)]
    covered = sum(modules.get(p, {}).get("trainable", 0) for p in outer)
    if covered >= trainable:
        others = "" if len(paths) == 1 else f" (with the freeze(s) of {', '.join(sorted(paths - {frozen[-1]}))} not yet applied)"
        raise ValueError(
            f"freezing {frozen[-1]!r} would leave no trainable parameters{others}; unfreeze something first"
        )


def apply_module_op(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cmd: UpdateModule) -> str:
    """Apply a validated ``cmd``; return a short description of what changed."""
    import torch

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
