"""A sharded data buffer on a real Ray cluster: ingests spread over two shards by batch_id,
either shard SIGKILLed mid-ingest, every acknowledged row in the primary exactly once,
training on the merged rows, and a resume that finds the same rows in the same order."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from .conftest import wait_until
from .test_cli import cli
from .test_live_data import Traffic, live_config


def test_two_shards_survive_sigkill_of_either_and_lose_no_acknowledged_row(
    tmp_path: Path, start: Any, ray_cluster: dict[str, Any]
) -> None:
    config = live_config(tmp_path, buffer_shards=2)
    handle = start(config)
    client = handle.client()
    assert len(handle.shards) == 1
    traffic = Traffic(client)
    acked = traffic.acked
    for actor in (handle.shards[0], handle.buffer):  # the other shard, then the primary
        wait_until(lambda: len(acked) >= 20, what="some acknowledged ingests")
        pid = ray.get(actor.pid.remote())
        os.kill(pid, signal.SIGKILL)
        killed_at = len(acked)
        wait_until(lambda k=killed_at: len(acked) >= k + 20, timeout=90, what="ingests to go on after the restart")
        assert ray.get(actor.pid.remote()) != pid  # it really restarted
    step = client.status()["step"]
    wait_until(lambda: client.status()["step"] >= step + 20, timeout=60, what="training to go on")
    assert traffic.stop() == 0
    assert not traffic.errors, traffic.errors

    sent = traffic.sent()
    total = sum(n for _, n, _ in sent)
    # Both shards took ingests (routing by batch_id), each stored on its own disk.
    assert (Path(config.resolved_run_dir) / "buffer" / "shard-1" / "live").is_dir()
    # (Rows per shard follow the batches: a few large coalesced ones may all hash to one.)
    on_shard = ray.get(handle.shards[0].sources.remote())["live"]["rows"]
    assert 0 < on_shard < total
    from ray_interactive.data.shards import shard_of

    assert 0 < sum(shard_of(a["batch_id"], 2) for a in acked) < len(acked)
    # The primary merges every acknowledged row, exactly once.
    wait_until(lambda: client.sources()["live"]["rows"] >= total, timeout=60, what="the primary to merge every shard")
    stored = client.read_rows("live", columns=["y"]).column("y").to_numpy().astype(np.int64)
    assert len(stored) == total and len(np.unique(stored)) == total
    expected = np.concatenate([np.arange(first, first + n) for first, n, _ in sent])
    np.testing.assert_array_equal(np.sort(stored), np.sort(expected))
    shards = ray.get(handle.buffer.stats.remote())["shards"]
    assert shards[0]["shard"] == 1 and shards[0]["copied_rows"] > 0 and shards[0]["error"] is None
    wait_until(lambda: "shard 1" in cli("--address", ray_cluster["address"], "data", config.name).stdout,
               what="the data CLI to show the shard's merge")
    client.stop()
    handle.wait(timeout=60)
    handle.shutdown()

    with pytest.raises(ValueError, match="holds 2 buffer shards"):
        start(config.model_copy(update={"buffer_shards": 1}), resume=True)
    again = start(config, resume=True)
    ys = again.client().read_rows("live", columns=["y"]).column("y").to_numpy().astype(np.int64)
    np.testing.assert_array_equal(ys, stored)  # the same rows in the same order: positions still hold
