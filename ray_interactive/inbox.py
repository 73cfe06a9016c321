"""The trainer's command inbox: commands arrive on another thread, possibly out of order.

Ray's threaded actors do not keep call order, so commands carry the controller's sequence
numbers and the inbox releases them in order: a command is due only when every command
numbered before it has arrived, and (for ``at_step`` commands) the step has come.
A command waiting for its ``at_step`` does not hold back later commands.
"""

from __future__ import annotations

import threading

from ray_interactive.commands import CommandRecord


class CommandInbox:
    """Thread-safe, sequence-ordered store of accepted commands not yet applied."""

    def __init__(self, next_seq: int = 1) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Event()
        self._pending: dict[int, CommandRecord] = {}
        self._frontier = next_seq  # lowest sequence number not yet received

    def put(self, records: list[CommandRecord]) -> None:
        """Add records (called from the control thread)."""
        with self._lock:
            for r in records:
                assert r.seq is not None
                if r.seq >= self._frontier:  # below it: a duplicate delivery
                    self._pending[r.seq] = r
            while self._frontier in self._pending:
                self._frontier += 1
        self._arrived.set()

    def skip_to(self, next_seq: int) -> None:
        """Forget numbers below ``next_seq`` (a resumed run starts after its log)."""
        with self._lock:
            self._frontier = max(self._frontier, next_seq)

    def __bool__(self) -> bool:
        return bool(self._pending)  # a dict read: cheap enough for every step

    def due(self, step: int) -> list[CommandRecord]:
        """Remove and return the commands to apply now, in sequence order."""
        with self._lock:
            ready = sorted(
                seq
                for seq, r in self._pending.items()
                if seq < self._frontier and (r.command is None or r.command.at_step is None or r.command.at_step <= step)
            )
            return [self._pending.pop(seq) for seq in ready]

    def drain(self) -> list[CommandRecord]:
        """Remove and return everything still pending (the run is ending)."""
        with self._lock:
            records = [self._pending.pop(seq) for seq in sorted(self._pending)]
        return records

    def wait(self, timeout: float) -> None:
        """Sleep until a command arrives or ``timeout`` passes (used while paused)."""
        self._arrived.wait(timeout)
        self._arrived.clear()
