"""Order and durability for the data buffer's async shell: plain asyncio, no Ray.

* :class:`Turns` serves the numbered batch requests of one stream strictly in order (an
  async actor does not promise call order);
* :class:`GroupCommit` makes concurrent ingests share one fsync, each acknowledged only
  once it is on disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ray_interactive.data.buffer import DataBuffer

log = logging.getLogger(__name__)


class Turns:
    """Serves numbered requests of one *stream* strictly in order (an async actor does not
    promise call order); a newer stream, opened by its request 0, supersedes the old one,
    whose late requests are answered as stale."""

    def __init__(self, timeout: float = 120.0) -> None:
        self.stream = -1
        self.next = 0
        self.timeout = timeout
        self._cond = asyncio.Condition()

    async def acquire(self, stream: int, seq: int) -> bool:
        """Wait for this request's turn; False if its stream was superseded."""
        async with asyncio.timeout(self.timeout), self._cond:
            verdict = await self._cond.wait_for(lambda: self._ready(stream, seq))
            if verdict == "stale":
                return False
            if stream > self.stream:
                self.stream, self.next = stream, 0
                self._cond.notify_all()  # waiters of the old stream are now stale
            return True

    def _ready(self, stream: int, seq: int) -> str | None:
        if stream < self.stream:
            return "stale"
        if (stream > self.stream and seq == 0) or (stream == self.stream and seq == self.next):
            return "go"
        return None

    async def release(self, stream: int, seq: int) -> None:
        async with self._cond:
            if stream == self.stream and seq == self.next:  # not a superseded stream's late turn
                self.next += 1
                self._cond.notify_all()


class GroupCommit:
    """One fsync for every ingest written while the previous fsync ran (group commit):
    concurrent ingests share the cost; each is acknowledged only once it is on disk."""

    def __init__(self, buffer: DataBuffer) -> None:
        self.buffer = buffer
        self.written = 0  # ingests written so far
        self.durable = 0  # ingests covered by the last finished fsync
        self._task: asyncio.Future[None] | None = None

    async def wait(self, upto: int) -> None:
        while self.durable < upto:
            if self._task is None:
                self._task = asyncio.ensure_future(self._sync())
            await asyncio.shield(self._task)

    async def _sync(self) -> None:
        try:
            upto, job = self.written, self.buffer.sync_job()
            try:
                await asyncio.get_running_loop().run_in_executor(None, job)
            except OSError:
                # After a failed fsync the kernel may have dropped the dirty pages: what is
                # on disk is unknown. Die, so Ray restarts the actor and it recovers from what
                # the segments really hold; clients retry their unacknowledged batch_ids.
                log.critical("fsync failed; restarting the buffer to recover from disk", exc_info=True)
                os._exit(70)
            self.durable = max(self.durable, upto)
        finally:
            self._task = None
