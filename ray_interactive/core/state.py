"""The train state: everything a steered run is, besides its weights and optimizer state.

One typed object, shared by every front-end (our Trainer actor, Hugging Face ``Trainer``,
a plain PyTorch loop). Its fields say once what a checkpoint stores, what a load and a
failed load's rollback restore, and what the snapshot shows:

* ``persist`` fields go into a checkpoint (:meth:`TrainState.to_checkpoint`) and come
  back on a load (:meth:`TrainState.from_checkpoint`); a failed load restores them from
  the same dict. Adding a field here is the whole edit: the round-trip test in
  ``tests/test_unit_core.py`` walks every field.
* the other fields are the run's life (paused, stopping, messages): never checkpointed.

The learning rate lives in ``schedule``, an :class:`LrControl`: our own schedules
(:class:`OwnSchedule`, which writes the lr into the param groups before each step) or a
front-end's scheduler (Hugging Face's ``LambdaLR``, see :mod:`ray_interactive.train.hf`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

from ray_interactive.core import schedules
from ray_interactive.core.schedules import Schedule, ScheduleKind

if TYPE_CHECKING:
    import torch


class RunStatus(enum.StrEnum):
    """Where a run is; the status every report carries."""

    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    WAITING = "waiting"  # no data to draw (the mixture's sources are empty)
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    # Said by the controller, never by a trainer:
    RECOVERING = "recovering"  # the trainer died and is being restarted from a checkpoint
    STALLED = "stalled"  # "running", but no step has completed for a while (core/stalls.py)

    @property
    def is_final(self) -> bool:
        return self in (RunStatus.STOPPED, RunStatus.FAILED)


class LrControl(Protocol):
    """The learning rate of each param group, step by step, under commands."""

    def lrs(self, step: int) -> list[float]:
        """The lr of each group for the optimizer step after ``step`` completed steps."""
        ...

    def set_lrs(self, step: int, new: dict[int, float]) -> None:
        """From the next step on, group ``g`` uses ``new[g]``; the schedule keeps its shape."""
        ...

    def start(self, kind: ScheduleKind, step: int, steps: int | None, min_lr_ratio: float, gamma: float,
              warmup_steps: int) -> str:
        """A new schedule from ``step`` at the current lrs; returns a description."""
        ...

    def apply(self, step: int) -> None:
        """Write the lrs into the param groups before a step (if the front-end does not)."""
        ...

    def to_dict(self) -> dict[str, Any]: ...

    def load_dict(self, d: dict[str, Any]) -> None: ...


class OwnSchedule:
    """Our schedules (:mod:`ray_interactive.core.schedules`) over an optimizer's param groups."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule) -> None:
        self.optimizer = optimizer
        self.schedule = schedule

    @classmethod
    def starting(cls, optimizer: torch.optim.Optimizer, kind: ScheduleKind = "constant", steps: int | None = None,
                 min_lr_ratio: float = 0.0, gamma: float = 0.1, warmup_steps: int = 0) -> OwnSchedule:
        for g in optimizer.param_groups:
            g["lr"] = float(g["lr"])  # a command's lr must not be silently cast elsewhere
        lrs = [g["lr"] for g in optimizer.param_groups]
        return cls(optimizer, schedules.start(kind, 0, lrs, steps, min_lr_ratio, gamma, warmup_steps))

    def lrs(self, step: int) -> list[float]:
        return [schedules.lr_at(self.schedule, g, step) for g in range(len(self.optimizer.param_groups))]

    def set_lrs(self, step: int, new: dict[int, float]) -> None:
        self.schedule = schedules.rescale(self.schedule, step, new)
        self.apply(step)

    def start(self, kind: ScheduleKind, step: int, steps: int | None, min_lr_ratio: float, gamma: float,
              warmup_steps: int) -> str:
        self.schedule = schedules.start(kind, step, self.lrs(step), steps, min_lr_ratio, gamma, warmup_steps)
        self.apply(step)
        return f"{kind} schedule from step {step}"

    def apply(self, step: int) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.lrs(step)):
            group["lr"] = lr

    def to_dict(self) -> dict[str, Any]:
        return self.schedule.to_dict()

    def load_dict(self, d: dict[str, Any]) -> None:
        self.schedule = Schedule.from_dict(d)


def _persist(default: Any = None, **kw: Any) -> Any:
    return field(default=default, metadata={"persist": True}, **kw)


def _runtime(default: Any = None) -> Any:
    return field(default=default, metadata={"persist": False})


@dataclass
class TrainState:
    """A steered run's state (see the module docstring for what each kind of field means)."""

    schedule: LrControl = field(metadata={"persist": True})
    step: int = _persist(0)  # completed optimizer steps
    branch: str = _persist("main")
    samples_seen: int = _persist(0)
    grad_clip: float | None = _persist(None)
    grad_accumulation: int = _persist(1)
    last_checkpoint: str | None = _persist(None)  # the newest checkpoint of this lineage

    paused: bool = _runtime(False)
    stopping: str | None = _runtime(None)  # why the run is ending, once it is
    ended: RunStatus | None = _runtime(None)  # STOPPED or FAILED once the loop is over
    waiting_for_data: bool = _runtime(False)
    message: str | None = _runtime(None)  # why the run is paused or waiting, until it goes on

    @classmethod
    def starting(cls, config: Any, optimizer: torch.optim.Optimizer) -> TrainState:
        """The state a run begins in, from its :class:`~ray_interactive.core.config.RunConfig`
        (our schedule over the optimizer's lrs)."""
        sc = config.schedule
        return cls(
            schedule=OwnSchedule.starting(optimizer, sc.kind, sc.steps, sc.min_lr_ratio, sc.gamma, sc.warmup_steps),
            grad_clip=config.grad_clip,
            grad_accumulation=config.grad_accumulation,
            paused=config.start_paused,
        )

    @classmethod
    def persisted(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.metadata.get("persist")]

    def to_checkpoint(self) -> dict[str, Any]:
        """The persisted fields as JSON values (``schedule`` as its dict)."""
        out: dict[str, Any] = {}
        for name in self.persisted():
            value = getattr(self, name)
            out[name] = value.to_dict() if hasattr(value, "to_dict") else value
        return out

    def from_checkpoint(self, d: dict[str, Any]) -> None:
        """Restore the persisted fields from :meth:`to_checkpoint`'s dict (in place: the
        schedule object stays the one the front-end drives)."""
        missing = [n for n in self.persisted() if n not in d and n != "last_checkpoint"]
        if missing:
            raise ValueError(f"the checkpoint's state lacks {', '.join(missing)}")
        for name in self.persisted():
            if name == "schedule":
                self.schedule.load_dict(d["schedule"])
            elif name in d:
                setattr(self, name, d[name])

    @property
    def status(self) -> RunStatus:
        if self.ended is not None:
            return self.ended
        if self.stopping:
            return RunStatus.STOPPING
        if self.paused:
            return RunStatus.PAUSED
        return RunStatus.WAITING if self.waiting_for_data else RunStatus.RUNNING
