"""What the steering core needs from the ranks of a job (no ``torch.distributed`` here).

A loop launched on many ranks (torchrun, accelerate, a Ray Train worker function) runs
one steering core per rank. Only rank 0 hears from the run's controller; at each control
point the ranks meet in one :meth:`RankLink.exchange`: rank 0 hands over the commands
that reached it since the last one, every rank puts them in its own inbox, and so every
rank applies every command at the same optimizer step (the inboxes decide alike: same
records, same step). The same exchange averages the loss over ranks.

In a training step the exchange is *pipelined*: it is started at this step's control
point and finished at the next one, so its latency hides behind a forward and backward
(a command reaches the ranks one step after rank 0 had it; the step's mean loss is filled
in at the next step). While paused, and at the start and end, it is finished at once.
The implementation over ``torch.distributed`` is :class:`ray_interactive.train.ranks.Ranks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ray_interactive.core.commands import CommandRecord

__all__ = ["CHECKPOINT_DUE", "Exchanged", "RankLink"]

CHECKPOINT_DUE = 2  # a flag bit: rank 0's clock says a timed checkpoint is due


@dataclass
class Exchanged:
    """What every rank knows after an exchange."""

    records: list[CommandRecord] = field(default_factory=list)  # rank 0's new commands, in order
    flags: int = 0  # rank 0's flags (CHECKPOINT_DUE)
    mean_loss: float | None = None  # the loss averaged over the ranks that gave one


class RankLink(Protocol):
    rank: int
    world: int

    def exchange(self, records: list[CommandRecord], flags: int, loss: float | None, pipelined: bool = False) -> list[Exchanged]:
        """A collective every rank calls at the same control point (``records`` and
        ``flags`` count on rank 0 only): the exchanges finished now, in order - the one
        started at the previous control point, if any, then (unless ``pipelined``: it is
        left to finish at the next call) this one."""
        ...

    def finish(self) -> list[Exchanged]:
        """A collective: finish the exchange in flight now (none: ``[]``)."""
        ...

    def agree(self, ok: bool) -> bool:
        """A collective: True only if ``ok`` on every rank."""
        ...
