"""Accepted commands on their way to the training loop.

Every loop - our Trainer actor, its ranks, a Hugging Face ``Trainer``, a plain loop - pulls
its commands the same way: a long poll (``pull(after_seq)``) answered the moment a command
is accepted. The poll names the last number the loop has, which acknowledges everything
up to it; what is left is given again until acknowledged, so a lost answer loses nothing.
Commands held through a trainer's recovery are released once it is back where it died:
they are numbered below what the restarted loop was given, and go out once.
"""

from __future__ import annotations

from ray_interactive.core.commands import CommandRecord


class Outbox:
    """What the controller has accepted for the loop and the loop has not acknowledged."""

    def __init__(self) -> None:
        self._pending: list[CommandRecord] = []
        self._released: list[CommandRecord] = []

    def add(self, records: list[CommandRecord]) -> None:
        self._pending.extend(records)

    def release(self, records: list[CommandRecord]) -> None:
        """Commands held through a recovery, due to the restarted loop (given once)."""
        self._released.extend(records)

    def restart(self, pending: list[CommandRecord]) -> None:
        """A loop starts afresh (a restarted controller, a recovery): ``pending`` is what
        is on its way now; the loop's ``after_seq`` drops what it already has."""
        self._pending = sorted(pending, key=lambda r: r.seq or 0)
        self._released = []

    def ready(self, after_seq: int) -> bool:
        return bool(self._released) or any((r.seq or 0) > after_seq for r in self._pending)

    def take(self, after_seq: int) -> list[CommandRecord]:
        """Acknowledge up to ``after_seq``; return the released ones (once) and the rest."""
        self._pending = [r for r in self._pending if (r.seq or 0) > after_seq]
        released, self._released = self._released, []
        return released + list(self._pending)
