"""Batch feeds: how the trainer gets batches from the data buffer.

:class:`LocalFeed` calls a :class:`DataBuffer` directly (unit tests, notebooks);
``ray_interactive.runtime.feeds.RayFeed`` keeps calls in flight to the buffer actor. Both
track the *data position after the last batch handed out*, which is what a checkpoint
must store: batches prefetched but not yet trained on do not count.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ray_interactive.data.buffer import BatchChunk, DataBuffer


@dataclass
class Batch:
    """One training batch and where it came from."""

    table: pa.Table
    meta: dict[str, Any]


class FeedBase:
    def __init__(self, batch_size: int, position: dict[str, Any]) -> None:
        self.batch_size = batch_size
        self.position = position  # after the last batch handed out
        self._ready: collections.deque[tuple[pa.Table, dict[str, Any], dict[str, Any]]] = collections.deque()

    def _unpack(self, chunk: BatchChunk) -> None:
        n = chunk.batch_size
        for i, (pos, meta) in enumerate(zip(chunk.positions, chunk.meta)):
            self._ready.append((chunk.table.slice(i * n, n), pos, meta))

    def _pop(self) -> Batch:
        table, pos, meta = self._ready.popleft()
        self.position = pos
        return Batch(table, meta)


class LocalFeed(FeedBase):
    """Draws batches from an in-process :class:`DataBuffer`."""

    def __init__(self, buffer: DataBuffer, batch_size: int, per_request: int = 1) -> None:
        super().__init__(batch_size, buffer.position())
        self.buffer = buffer
        self.per_request = per_request

    def next(self) -> Batch | None:
        if not self._ready:
            chunk = self.buffer.next_batches(self.batch_size, self.per_request)
            if chunk is None:
                return None
            self._unpack(chunk)
        return self._pop()

    def reset(self, position: dict[str, Any], weights: dict[str, float] | None = None) -> None:
        self._ready.clear()
        self.buffer.restore(position)
        if weights is not None:
            self.buffer.set_mixture(weights)
        self.position = self.buffer.position()
