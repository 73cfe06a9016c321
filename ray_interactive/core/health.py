"""The training health guard: what a run does when a step is not finite.

A step whose loss or gradient norm is NaN or infinite never reaches the weights: the
trainer drops its gradients and asks :class:`HealthGuard` what to do next, by the run's
policy (:class:`~ray_interactive.core.config.HealthConfig`):

* ``pause`` (default) - pause, with a status message saying what happened and what to do;
* ``skip`` - go on with the next batch; after ``max_skips`` in a row, or once the weights
  themselves are no longer finite, pause;
* ``rollback`` - load the newest checkpoint of the run's lineage whose weights are finite
  and multiply the lr by ``lr_factor``; after ``max_rollbacks`` to one checkpoint, pause.

The decision is a pure function of plain data; :func:`nonfinite_tensors` is the check the
trainer uses on weights (before it publishes or rolls back) and on checkpoints.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch

from ray_interactive.core.config import HealthConfig

Action = Literal["skip", "pause", "rollback"]


@dataclass(frozen=True)
class Verdict:
    """What to do about a non-finite step, and the sentence that says why."""

    action: Action
    message: str
    target: str | None = None  # the checkpoint to roll back to


@dataclass
class HealthGuard:
    """Counts non-finite steps and decides, by policy, what each one leads to."""

    config: HealthConfig
    skipped_total: int = 0
    in_a_row: int = 0
    rollbacks: collections.Counter[str] = field(default_factory=collections.Counter)

    def good_step(self) -> None:
        self.in_a_row = 0

    def non_finite(self, what: str, step: int, weights_finite: bool, rollback_target: str | None) -> Verdict:
        """A step that would have ended at ``step`` was not finite (``what``: the values)."""
        self.skipped_total += 1
        self.in_a_row += 1
        seen = f"non-finite {what} in the step to {step}; the step was skipped"
        advice = "Lower the lr, clip gradients or load a checkpoint, then resume."
        weights = "" if weights_finite else " The weights themselves are no longer finite."
        policy = self.config.on_non_finite
        if policy == "skip":
            if not weights_finite:
                return Verdict("pause", f"health guard paused the run: {seen}.{weights} Skipping cannot help. {advice}")
            if self.in_a_row >= self.config.max_skips:
                return Verdict(
                    "pause", f"health guard paused the run: {seen}, {self.in_a_row} in a row (max_skips). {advice}"
                )
            return Verdict("skip", f"health guard: {seen} ({self.in_a_row} in a row; pauses at {self.config.max_skips})")
        if policy == "rollback":
            if rollback_target is None:
                return Verdict(
                    "pause", f"health guard paused the run: {seen}.{weights} No checkpoint with finite weights to roll "
                    f"back to. {advice}"
                )
            if self.rollbacks[rollback_target] >= self.config.max_rollbacks:
                return Verdict(
                    "pause", f"health guard paused the run: {seen}, after {self.rollbacks[rollback_target]} rollback(s) "
                    f"to {rollback_target} (max_rollbacks). {advice}"
                )
            self.rollbacks[rollback_target] += 1
            return Verdict(
                "rollback",
                f"health guard: {seen}.{weights} Rolling back to {rollback_target} with the lr times "
                f"{self.config.lr_factor:g} (rollback {self.rollbacks[rollback_target]} of {self.config.max_rollbacks}).",
                rollback_target,
            )
        return Verdict("pause", f"health guard paused the run: {seen}.{weights} {advice}")


def nonfinite_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity.

    One float32 sum per tensor (float64 for float64 ones) and one host sync per device: a
    NaN or an infinity makes the sum non-finite, so a finite sum clears the tensor; a
    non-finite one may also be an overflow of large finite values, and only that tensor's
    elements are then looked at. Cheap enough for every checkpoint and weight version (a
    float64 sum of every tensor took 3-5x longer, inside the step that publishes), and for
    the step that went wrong."""
    sums: dict[torch.device, list[tuple[str, torch.Tensor, torch.Tensor]]] = collections.defaultdict(list)
    for name, t in named:
        t = t.to_local() if hasattr(t, "to_local") else t  # a shard (FSDP): the ranks agree on the answer
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
            t = t.detach()
            acc = torch.float64 if t.dtype == torch.float64 else torch.float32
            sums[t.device].append((name, t, t.sum(dtype=acc)))
    bad: list[str] = []
    for items in sums.values():
        finite = torch.isfinite(torch.stack([s for _, _, s in items])).tolist()
        bad.extend(name for (name, t, _), ok in zip(items, finite, strict=True)
                   if not ok and not bool(torch.isfinite(t).all()))
    return bad


def describe_values(**values: float) -> str:
    """``loss=nan, grad norm=inf``: the values that were not finite (all, if none is)."""
    bad = {k: v for k, v in values.items() if not (v == v and abs(v) != float("inf"))}
    return ", ".join(f"{k.replace('_', ' ')}={v:g}" for k, v in (bad or values).items())
