"""A sharded data buffer: which shard takes an ingest, and how the primary names its copies.

With ``buffer_shards`` N > 1 a run has N buffer actors. Shard 0, the *primary*, holds
every source and serves the trainer; every shard (the primary too) takes ingests. An
ingest goes to shard ``shard_of(batch_id, N)``: a pure function of the batch id, so a
retry - from the same client or another one - reaches the shard that stored the first
copy and is acknowledged once (exactly-once across shards).

The primary pulls each other shard's acknowledged rows and appends them to its own
segments as *copies*, one per pull, named by :func:`copy_id`. The primary's row order,
and so every draw of the sampler and every data position, is its own durable order; the
copies' names tell a restarted primary how far it got with each shard.
"""

from __future__ import annotations

import re
import zlib

# '@' is not allowed in a client's batch_id (check_batch_id): no client id can pass for a copy.
_COPY_RE = re.compile(r"^@shard(\d+):(.+):(\d+)$")


def shard_of(batch_id: str, shards: int) -> int:
    """The shard that stores the ingest ``batch_id`` (stable across processes and runs)."""
    if shards < 1:
        raise ValueError(f"a buffer has at least one shard, not {shards}")
    return zlib.crc32(batch_id.encode()) % shards


def copy_id(shard: int, source: str, first: int) -> str:
    """The primary's batch id for the rows of ``shard``'s ``source`` from ``first`` on."""
    return f"@shard{shard}:{source}:{first}"


def parse_copy_id(batch_id: str) -> tuple[int, str, int] | None:
    """``(shard, source, first)`` of a copy's batch id; None for a client's own."""
    m = _COPY_RE.fullmatch(batch_id)
    return None if m is None else (int(m[1]), m[2], int(m[3]))
