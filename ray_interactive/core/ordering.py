"""Reports applied in the order they were sent, whatever order they arrive in.

Calls to a threaded actor may run out of order (their threads race for the controller's
lock): a checkpoint's "saved" could then land after the "removed" that retention sent a
few checkpoints later, and the controller would list a checkpoint that is gone for good.
Each reporter numbers its reports; :class:`InOrder` holds one that comes early until
those before it are in.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class InOrder(Generic[T]):
    """Items numbered 1, 2, 3, ... released in that order.

    An item numbered below the next one due (a controller that was restarted mid-run and
    began counting from the first report it heard; a number 0: not numbered) is released
    at once - late is better than never. A gap that does not close within ``max_held``
    later items (a report lost with a dead process) is skipped.
    """

    def __init__(self, first: int | None = 1, max_held: int = 64) -> None:
        self.next = first  # None: start from the first number heard
        self.max_held = max_held
        self._held: dict[int, T] = {}

    def arrive(self, number: int, item: T) -> list[T]:
        """Take item ``number``; the items now due, in order."""
        if number <= 0:
            return [item]
        if self.next is None:
            self.next = number
        if number < self.next:
            return [item]
        self._held[number] = item
        due: list[T] = []
        while True:
            while self.next in self._held:
                due.append(self._held.pop(self.next))
                self.next += 1
            if len(self._held) <= self.max_held:
                return due
            self.next = min(self._held)  # the gap will not close: go on past it

    @property
    def held(self) -> int:
        return len(self._held)


class ReportOrder(Generic[T]):
    """:class:`InOrder` per reporter (a loop's start; another process attached to the run),
    keeping the few most recent."""

    def __init__(self, first: int | None = 1, keep: int = 8) -> None:
        self.first = first
        self.keep = keep
        self._by_reporter: dict[str, InOrder[T]] = {}

    def arrive(self, reporter: str, number: int, item: T) -> list[T]:
        order = self._by_reporter.get(reporter)
        if order is None:
            if len(self._by_reporter) >= self.keep:
                self._by_reporter.pop(next(iter(self._by_reporter)))
            order = self._by_reporter[reporter] = InOrder(self.first)
        return order.arrive(number, item)
