"""Per-module health indicators, sampled every N steps (``RunConfig.diagnostics_every``).

Loss and grad norm say little about *why* a run goes wrong; these say where. For each
group of modules (the model's module tree cut at the depth that gives at most
``max_groups`` groups: a small GPT-2 gives ``transformer.h.0``, ``transformer.h.1``, ...):

* ``health/<group>/act_std`` - the standard deviation of the group's output activations;
* ``health/<group>/dead`` - the fraction of units of its activation functions (ReLU, GELU,
  SiLU, ...) that never exceeded 1e-6 in magnitude over the step's batch;
* ``health/<group>/grad_norm`` - the norm of its parameters' gradients (after clipping);
* ``health/<group>/update_ratio`` - ``||w_after - w_before|| / ||w_before||`` of the step.

Between samples this costs one integer comparison a step: hooks are attached for the
sampled step's forward only, and weights are copied only then. Values are tensors until
a report reads them in bulk, like the loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

#: Activation-function classes whose outputs count for ``dead`` (matched by class name, so
#: transformers' own GELU variants count too).
ACTIVATION_NAMES = ("ReLU", "LeakyReLU", "GELU", "SiLU", "Mish", "ELU", "Tanh", "Sigmoid", "Activation")
DEAD_BELOW = 1e-6


def module_groups(model: nn.Module, max_groups: int = 8) -> dict[str, list[str]]:
    """``{group: [parameter names]}``: the deepest cut of the module tree with at most
    ``max_groups`` groups holding parameters (shared parameters count once, first owner)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    owners = {n: n.rsplit(".", 1)[0] if "." in n else "" for n in names}  # the module holding it
    depth = max((o.count(".") + 1 for o in owners.values() if o), default=0)
    while True:
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(".".join(owners[n].split(".")[:depth]), []).append(n)
        if len(groups) <= max_groups or depth == 0:
            return groups
        depth -= 1


class ModuleHealth:
    """Samples the indicators on every ``every``-th step of ``model``."""

    def __init__(self, model: nn.Module, every: int, max_groups: int = 8) -> None:
        if every < 1:
            raise ValueError(f"diagnostics_every must be at least 1, not {every}")
        self.model, self.every = model, every
        self.groups = module_groups(model, max_groups)
        params = dict(model.named_parameters())
        self._params = {g: [params[n] for n in ns] for g, ns in self.groups.items()}
        modules = dict(model.named_modules())
        self._modules = {g: modules[g] for g in self.groups if g in modules}
        # each activation function counts for the group it sits in, else under its own name
        self._activations: dict[str, list[nn.Module]] = {}
        for name, m in modules.items():
            if _is_activation(m):
                owner = next((g for g in self.groups if not g or name.startswith(g + ".")), name)
                self._activations.setdefault(owner, []).append(m)
        self._handles: list[Any] = []
        self._before: dict[str, list[torch.Tensor]] | None = None
        self._acts: dict[str, list[torch.Tensor]] = {}
        self._dead: dict[str, list[torch.Tensor]] = {}
        self._grads: dict[str, torch.Tensor] = {}

    @property
    def armed(self) -> bool:
        return self._before is not None

    def arm_for(self, step: int) -> None:
        """Before step ``step`` (1-based, the one about to run): attach hooks if it is sampled."""
        if step % self.every or self.armed:
            return
        with torch.no_grad():
            self._before = {g: [p.detach().clone() for p in ps] for g, ps in self._params.items()}
        self._acts, self._dead, self._grads = {}, {}, {}
        for g, m in self._modules.items():
            self._handles.append(m.register_forward_hook(self._output_hook(g)))
        for g, acts in self._activations.items():
            for a in acts:
                self._handles.append(a.register_forward_hook(self._dead_hook(g)))

    def _output_hook(self, group: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple | list) else getattr(output, "logits", output)
            if isinstance(out, torch.Tensor) and out.numel() > 1 and out.is_floating_point():
                self._acts.setdefault(group, []).append(out.detach().float().std())
        return hook

    def _dead_hook(self, group: str) -> Any:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor) and output.dim() >= 1 and output.is_floating_point():
                peak = output.detach().abs().reshape(-1, output.shape[-1]).amax(dim=0)
                self._dead.setdefault(group, []).append((peak <= DEAD_BELOW).float().mean())
        return hook

    def grads_ready(self) -> None:
        """With the step's (clipped) gradients in place: their norm per group."""
        if not self.armed or self._grads:
            return
        for g, ps in self._params.items():
            grads = [p.grad for p in ps if p.grad is not None]
            if grads:
                self._grads[g] = torch.nn.utils.get_total_norm(grads).detach()

    def collect(self) -> dict[str, torch.Tensor]:
        """After the optimizer step: the sampled step's metrics (empty when not sampled)."""
        if not self.armed:
            return {}
        self.grads_ready()  # a front-end that never showed the gradients still gets the rest
        for h in self._handles:
            h.remove()
        self._handles = []
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            assert self._before is not None
            for g, ps in self._params.items():
                key = f"health/{g or 'model'}"
                delta = torch.stack([(p.detach() - b).float().norm() for p, b in zip(ps, self._before[g])]).norm()
                base = torch.stack([b.float().norm() for b in self._before[g]]).norm()
                out[f"{key}/update_ratio"] = delta / base.clamp_min(1e-12)
                if g in self._grads:
                    out[f"{key}/grad_norm"] = self._grads[g]
                if self._acts.get(g):
                    out[f"{key}/act_std"] = torch.stack(self._acts[g]).mean()
            for g, fractions in self._dead.items():
                out[f"health/{g or 'model'}/dead"] = torch.stack(fractions).mean()
        self._before, self._acts, self._dead, self._grads = None, {}, {}, {}
        return out

    def disarm(self) -> None:
        """Drop a sample in progress (a skipped step, a load)."""
        for h in self._handles:
            h.remove()
        self._handles, self._before = [], None


def _is_activation(m: nn.Module) -> bool:
    name = type(m).__name__
    return not any(True for _ in m.children()) and any(a in name for a in ACTIVATION_NAMES) and not any(
        True for _ in m.parameters(recurse=False))


__all__ = ["ModuleHealth", "module_groups"]
