"""The trainer's command inbox: commands arrive on another thread, possibly out of order.

Ray's threaded actors do not keep call order, so commands carry the controller's sequence
numbers and the inbox releases them in order: a command is due only when every command
numbered before it has arrived. An ``at_step`` command is due when the step has come and
no earlier-numbered ``at_step`` *load_checkpoint* is still waiting: a load moves the step
counter, so the steps of pinned commands after it count on the branch it starts (this is
how a replay crosses branches in the original order). Nothing else holds a command back:
a command without ``at_step`` never waits for a pinned one, and a pinned command never
waits for another pinned command that is not a load. A released ``load_checkpoint`` ends
the batch: it moves the step. A pending command can be withdrawn (:meth:`remove`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ray_interactive.core.commands import CommandRecord


class CommandInbox:
    """Thread-safe, sequence-ordered store of accepted commands not yet applied."""

    def __init__(self, next_seq: int = 1) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Event()
        self._pending: dict[int, CommandRecord] = {}
        self._frontier = next_seq  # lowest sequence number not yet received
        self._earliest: int | None = None  # smallest at_step pending (-1: one is due now)

    def put(self, records: list[CommandRecord], replayed: bool = False) -> None:
        """Add records (called from the control thread). ``replayed``: commands applied
        before a restart, given again with their old numbers (below the frontier)."""
        with self._lock:
            for r in records:
                assert r.seq is not None
                if replayed or r.seq >= self._frontier:  # below it: a duplicate delivery
                    self._pending[r.seq] = r
            while self._frontier in self._pending:
                self._frontier += 1
            self._update_earliest()
        self._arrived.set()

    def has_due(self, step: int) -> bool:
        """Cheap check for every step: could anything be due at ``step``?"""
        earliest = self._earliest
        return earliest is not None and earliest <= step

    def _update_earliest(self) -> None:
        ats = [-1 if r.command is None or r.command.at_step is None else r.command.at_step for r in self._pending.values()]
        self._earliest = min(ats, default=None)

    def due(self, step: int, only: Callable[[CommandRecord], bool] | None = None) -> list[CommandRecord]:
        """Remove and return the commands to apply now, in sequence order. With ``only``,
        just the leading due commands it accepts: the first due one it does not accept,
        and everything after it, wait for the next call without it (order is kept)."""
        with self._lock:
            ready, load_waiting = [], False
            for seq in sorted(self._pending):
                if seq >= self._frontier:
                    break
                cmd = self._pending[seq].command
                at = None if cmd is None else cmd.at_step
                if at is not None and (load_waiting or at > step):
                    if cmd is not None and cmd.moves_step:
                        load_waiting = True  # later pinned commands count steps on its branch
                    continue
                if only is not None and not only(self._pending[seq]):
                    break
                ready.append(seq)
                if cmd is not None and cmd.moves_step:
                    break
            records = [self._pending.pop(seq) for seq in ready]
            self._update_earliest()
            return records

    def drain(self) -> list[CommandRecord]:
        """Remove and return every command received in full order (below the frontier),
        due or not: rank 0 hands them on to the other ranks (:mod:`ray_interactive.core.ranks`)."""
        with self._lock:
            seqs = sorted(s for s in self._pending if s < self._frontier)
            records = [self._pending.pop(s) for s in seqs]
            self._update_earliest()
            return records

    def remove(self, seq: int) -> CommandRecord | None:
        """Withdraw the pending command numbered ``seq`` (None if it is not pending)."""
        with self._lock:
            record = self._pending.pop(seq, None) if seq < self._frontier else None
            self._update_earliest()
            return record

    def pending_loads(self) -> set[str]:
        """Checkpoint ids that pending ``load_checkpoint`` commands name."""
        with self._lock:
            return {
                r.command.checkpoint_id  # type: ignore[union-attr]
                for r in self._pending.values()
                if r.command is not None and r.command.kind == "load_checkpoint"
            }

    def wake(self) -> None:
        """Wake a loop waiting in :meth:`wait` (something other than a command needs it)."""
        self._arrived.set()

    def wait(self, timeout: float) -> None:
        """Sleep until a command arrives or ``timeout`` passes (used while paused)."""
        self._arrived.wait(timeout)
        self._arrived.clear()
