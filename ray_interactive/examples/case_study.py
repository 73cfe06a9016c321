"""The case studies' task: a small GPT-2 (from a config) with GPT-2's tokenizer on WikiText-2,
with a choice of optimizer for the non-agent baselines.

* ``adamw`` - AdamW (the task's default, two param groups);
* ``schedulefree`` - Schedule-Free AdamW (``schedulefree``): no schedule needed; it
  evaluates at its averaged weights (``optimizer.eval()`` around each evaluation);
* ``prodigy`` - Prodigy (``prodigyopt``): estimates the step size itself (lr 1.0 is its
  own recommendation; the run's lr multiplies its estimate).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ray_interactive.examples.tiny_lm import TinyLMTask

Optimizer = Literal["adamw", "schedulefree", "prodigy"]


class CaseStudyLM(TinyLMTask):
    def __init__(self, optimizer: Optimizer = "adamw", warmup_steps: int = 0, **kwargs: Any) -> None:
        if optimizer not in ("adamw", "schedulefree", "prodigy"):
            raise ValueError(f"optimizer must be adamw, schedulefree or prodigy, not {optimizer!r}")
        super().__init__(**kwargs)
        self.optimizer, self.warmup_steps = optimizer, warmup_steps
        self._opt: torch.optim.Optimizer | None = None

    def build_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        if self.optimizer == "adamw":
            return super().build_optimizer(model, lr)
        decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": decay, "weight_decay": 0.01, "name": "decay"},
                  {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
        if self.optimizer == "schedulefree":
            import schedulefree

            opt: torch.optim.Optimizer = schedulefree.AdamWScheduleFree(groups, lr=lr, warmup_steps=self.warmup_steps)
            opt.train()
        else:
            from prodigyopt import Prodigy

            opt = Prodigy(groups, lr=lr, safeguard_warmup=True)
        self._opt = opt
        return opt

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        swap = self._opt is not None and hasattr(self._opt, "eval")  # schedule-free: its averaged weights
        if swap:
            self._opt.eval()  # type: ignore[union-attr]
        try:
            return super().evaluate(model, device)
        finally:
            if swap:
                self._opt.train()  # type: ignore[union-attr]
