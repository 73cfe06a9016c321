"""A sharded buffer without Ray: routing by batch_id, a shard's durable rows pulled by the
primary into its own order, copies recovered after a restart, nothing copied twice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ray_interactive.data.buffer import check_batch_id
from ray_interactive.data.shards import copy_id, parse_copy_id, shard_of

from .test_unit_durable_buffer import all_ids, live_buffer, rows


def test_an_ingest_goes_to_one_shard_by_its_batch_id_and_spreads_evenly() -> None:
    ids = [f"replica-3-{i}" for i in range(4000)]
    assert [shard_of(b, 4) for b in ids] == [shard_of(b, 4) for b in ids]  # the same in every process
    counts = np.bincount([shard_of(b, 4) for b in ids], minlength=4)
    assert counts.min() > 800, counts
    assert {shard_of(b, 1) for b in ids} == {0}
    with pytest.raises(ValueError, match="at least one shard"):
        shard_of("x", 0)


def test_a_copy_id_cannot_be_mistaken_for_a_clients_batch_id() -> None:
    bid = copy_id(2, "live.events", 4096)
    assert parse_copy_id(bid) == (2, "live.events", 4096)
    assert parse_copy_id("b-17") is None
    with pytest.raises(ValueError, match="not valid"):
        check_batch_id(bid)  # a client cannot send a batch id that reads as a copy


def test_the_primary_copies_a_shards_rows_once_in_its_own_order_and_recovers_how_far_it_got(tmp_path: Path) -> None:
    shard = live_buffer(tmp_path / "shard-1")
    primary = live_buffer(tmp_path / "primary", base=True)
    for i in range(3):
        shard.ingest(rows(100 + 10 * i, 10), "live", batch_id=f"s{i}")
        primary.ingest(rows(10 * i, 10), "live", batch_id=f"p{i}")
    table, times = shard.pull("live", 0, 20)  # up to what the shard says is durable
    assert table.num_rows == 20 and len(times) == 20
    assert primary.copy_in("live", 1, 0, table, times) == 20
    assert primary.copy_in("live", 1, 0, table, times) == 0  # a repeated pull stores nothing
    assert primary.shard_cursors() == {(1, "live"): 20}
    rest, t2 = shard.pull("live", 20, 10**9)
    assert rest.num_rows == 10
    primary.copy_in("live", 1, 20, rest, t2)
    order = all_ids(primary)
    assert sorted(order) == sorted([*range(30), *range(100, 130)])
    # A restarted primary rebuilds the same order and knows the shard's 30 rows are in.
    again = live_buffer(tmp_path / "primary", base=True)
    np.testing.assert_array_equal(all_ids(again), order)
    assert again.shard_cursors() == {(1, "live"): 30}
    # And draws the same batches from the same position.
    pos = primary.position()
    a = primary.next_batches(8, 3, position=pos).table
    b = again.next_batches(8, 3, position=pos).table
    assert a.equals(b)


def test_pull_is_bounded_by_bytes_and_refuses_a_bad_range(tmp_path: Path) -> None:
    shard = live_buffer(tmp_path)
    shard.ingest(rows(0, 100, blob=1000), "live", batch_id="big")
    table, _ = shard.pull("live", 0, 100, max_bytes=10_000)
    assert 1 <= table.num_rows < 20
    with pytest.raises(ValueError, match="bad row range"):
        shard.pull("live", 50, 10)
    with pytest.raises(ValueError, match="no live source"):
        shard.pull("nope", 0, 1)
