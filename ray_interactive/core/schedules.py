"""Learning-rate schedules as plain data and pure functions.

We do not use ``torch.optim.lr_scheduler``: its schedulers recompute the lr from their own
``base_lrs`` on every step and would undo an lr a person has just set. Here a schedule is
a :class:`Schedule` segment that starts at a step; the trainer writes
``lr_at(schedule, group, step)`` into each param group before every optimizer step.

How a command combines with a schedule: setting ``lr`` **rescales the running schedule
from this step on** (:func:`rescale`), so the very next step uses exactly the new lr and
the schedule keeps its shape (a cosine decay keeps decaying, from the new value). If the
schedule has already decayed to zero, it is replaced by a constant schedule at the new lr;
set during a warmup, it ends the warmup and the decay starts from there at the new lr.
``set_lr_schedule`` starts a new segment at the current step from the current lr.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

ScheduleKind = Literal["constant", "linear", "cosine", "step"]


@dataclass(frozen=True)
class Schedule:
    """One schedule segment: ``lr(step) = base_lrs[group] * factor(step)``."""

    kind: ScheduleKind = "constant"
    start_step: int = 0
    base_lrs: tuple[float, ...] = field(default_factory=tuple)
    steps: int | None = None  # decay length (linear, cosine) or period (step)
    min_lr_ratio: float = 0.0
    gamma: float = 0.1
    warmup_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["base_lrs"] = list(self.base_lrs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schedule:
        return cls(**{**d, "base_lrs": tuple(d["base_lrs"])})


def check_args(kind: str, steps: int | None) -> None:
    """Raise ``ValueError`` if a schedule of ``kind`` lacks its length."""
    if kind != "constant" and steps is None:
        raise ValueError(f"a {kind} schedule needs 'steps' (how many steps it spans)")


def factor(s: Schedule, step: int) -> float:
    """Multiplier of the base lr at ``step`` (completed optimizer steps)."""
    t = max(0, step - s.start_step)
    if s.warmup_steps > 0:
        if t < s.warmup_steps:
            return (t + 1) / s.warmup_steps
        t -= s.warmup_steps
    if s.kind == "constant" or s.steps is None:
        return 1.0
    if s.kind == "step":
        return s.gamma ** (t // s.steps)
    progress = min(1.0, t / s.steps)
    if s.kind == "linear":
        return 1.0 - (1.0 - s.min_lr_ratio) * progress
    # cosine
    return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_at(s: Schedule, group: int, step: int) -> float:
    """The lr of param group ``group`` at ``step``."""
    return s.base_lrs[group] * factor(s, step)


def rescale(s: Schedule, step: int, new_lrs: dict[int, float]) -> Schedule:
    """Return a schedule whose lr at ``step`` is ``new_lrs[group]`` for the given groups.

    The other groups, and the shape of the schedule, are unchanged. Where the schedule's
    factor is zero at ``step`` (fully decayed), the result is a constant schedule.
    """
    if s.warmup_steps and step - s.start_step < s.warmup_steps:
        # During warmup a person means "this lr, now": rescaling would multiply the
        # post-warmup lr by up to warmup_steps. The warmup ends; the schedule's decay
        # starts from here, from the new lr (other groups keep their current lr).
        current = [new_lrs.get(g, lr_at(s, g, step)) for g in range(len(s.base_lrs))]
        return replace(s, start_step=step, warmup_steps=0, base_lrs=tuple(current))
    f = factor(s, step)
    if f <= 0.0:
        current = [lr_at(s, g, step) for g in range(len(s.base_lrs))]
        current = [new_lrs.get(g, lr) for g, lr in enumerate(current)]
        return Schedule(kind="constant", start_step=step, base_lrs=tuple(current))
    bases = list(s.base_lrs)
    for g, lr in new_lrs.items():
        bases[g] = lr / f
    return replace(s, base_lrs=tuple(bases))


def start(
    kind: ScheduleKind,
    step: int,
    current_lrs: list[float],
    steps: int | None = None,
    min_lr_ratio: float = 0.0,
    gamma: float = 0.1,
    warmup_steps: int = 0,
) -> Schedule:
    """A new schedule segment starting at ``step`` from the current lrs."""
    return Schedule(
        kind=kind,
        start_step=step,
        base_lrs=tuple(current_lrs),
        steps=steps,
        min_lr_ratio=min_lr_ratio,
        gamma=gamma,
        warmup_steps=warmup_steps,
    )
