"""Recovering a run whose trainer died: what to restart from and what to apply again.

The command log is the truth. A restarted trainer loads the newest checkpoint; every
command applied after that checkpoint was written is applied again at the step where it
took effect (pinned with ``at_step``, as a replay does), so the recomputed steps are the
steps the run had taken. Commands accepted but not yet applied, and those sent while the
trainer catches up, wait until it is back where it died, then go out in order.

Pure functions and a plain record: the controller keeps one :class:`Recovery` while it
lasts; the Ray actors only restart processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ray_interactive.core.checkpoints import CheckpointInfo
from ray_interactive.core.commands import CommandRecord, CommandStatus


@dataclass
class Recovery:
    """One trainer restart in progress, from its death until it is back where it died."""

    reason: str
    checkpoint: CheckpointInfo | None  # restarted from (None: from the start)
    died_at: tuple[str, int]  # (branch, step) the trainer had reached
    reapply: set[str]  # ids of re-applied commands whose outcome has not come back
    held: list[CommandRecord] = field(default_factory=list)  # wait until caught up, in order
    started: float = field(default_factory=time.time)  # when the loss was noticed
    last_heard: float = field(default_factory=time.time)  # the lost trainer's last report
    heard: bool = False  # a status of the restarted trainer came (until then the status is the lost one's)

    def caught_up(self, status: str, branch: str, step: int) -> bool:
        """Back where it died: every re-applied command came back, and the trainer reached
        the step it had (or is paused or waiting there: a re-applied pause holds it)."""
        if self.reapply or not self.heard:
            return False
        return status not in ("running", "starting") or (branch == self.died_at[0] and step >= self.died_at[1])

    def describe(self) -> str:
        where = f"checkpoint {self.checkpoint.id} (step {self.checkpoint.step})" if self.checkpoint else "the start"
        return (
            f"recovering: the trainer was lost ({self.reason}); restarted from {where}, recomputing to step "
            f"{self.died_at[1]} on {self.died_at[0]}"
        )


class RestartPlan(NamedTuple):
    """How a lost trainer restarts: from ``checkpoint`` (a directory; None: the run's start),
    applying ``reapply`` again, numbering its commands from ``next_seq``, reporting as
    ``incarnation``."""

    checkpoint: str | None
    reapply: list[CommandRecord]
    next_seq: int
    incarnation: int


def reapply_records(
    records: list[CommandRecord], checkpoint: CheckpointInfo | None, ckpt_dir: Path
) -> list[CommandRecord]:
    """The commands applied after ``checkpoint`` was written (all, for None), in order,
    each pinned to the step where it took effect. A kind may decline
    (:meth:`~ray_interactive.core.commands.CommandBase.repeat_on_recovery`: a
    ``save_checkpoint`` whose checkpoint is still on disk)."""
    since = checkpoint.created_at if checkpoint is not None else float("-inf")
    out = []
    for r in sorted(records, key=lambda r: r.seq or 0):
        if r.status is not CommandStatus.APPLIED or r.command is None or r.seq is None or r.event:
            continue
        if (r.applied_at or 0.0) <= since:
            continue
        if not r.command.repeat_on_recovery(r.message, ckpt_dir):
            continue
        out.append(r.model_copy(update={
            "command": r.command.model_copy(update={"at_step": r.applied_step}),
            "status": CommandStatus.ACCEPTED,
        }))
    return out
