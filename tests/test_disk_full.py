"""A run whose directory is on a full filesystem (a real, small tmpfs: needs root, else
skipped): ingest is refused with a clear error and nothing acknowledged is lost, the
storage error shows in `data` and the status, failed checkpoints are events and training
goes on, a stop still ends the run cleanly, and nothing on disk is left half-written."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import small_tmpfs, wait_until
from .test_cli import cli
from .test_live_data import live_config, live_rows


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "fs", "8m") as mnt:
        yield mnt


def fill(fs: Path) -> Path:
    """Take every free byte of ``fs``. Unbuffered: a buffered file keeps the bytes the full
    disk refused and raises again when it is closed (CI saw that, depending on where the
    free space happened to end)."""
    filler = fs / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while f.write(b"\0" * 65536):
                pass
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    return filler


def test_a_full_disk_refuses_ingest_clearly_fails_checkpoints_softly_and_a_stop_still_works(
    small_fs: Path, start: Any, ray_cluster: dict[str, Any]
) -> None:
    config = live_config(small_fs, checkpoint_every=10, metrics_flush_s=0.2, buffer={"stats_interval_s": 0.1})
    handle = start(config)
    client = handle.client()
    run_dir = config.resolved_run_dir
    acked = [client.ingest(live_rows(i * 20, 20), "live") for i in range(5)]
    wait_until(lambda: client.status()["step"] >= 20, what="steps and a few checkpoints")
    fill(small_fs)

    with pytest.raises(Exception, match="nothing was stored") as err:  # noqa: PT011 - Ray wraps the OSError
        client.ingest(live_rows(1000, 2000), "live")
    assert "No space left" in str(err.value)
    assert client.sources()["live"]["storage_error"]
    out = cli("--address", ray_cluster["address"], "data", config.name)
    assert out.returncode == 0 and "STORAGE FAILED" in out.stdout and "No space left" in out.stdout, out.stdout

    # Checkpoints fail as events; training goes on.
    def checkpoint_failed() -> Any:
        return [r for r in client.commands() if r["kind"] == "checkpoint_failed"]

    failed = wait_until(checkpoint_failed, timeout=60, what="a failed periodic checkpoint")
    assert "No space left" in failed[0]["message"] or "not written" in failed[0]["message"]
    step = client.status()["step"]
    wait_until(lambda: client.status()["step"] > step + 20, what="training to go on")
    status = wait_until(lambda: (s := client.status())["storage_error"] and s, timeout=30, what="storage error in status")
    assert client.status()["status"] == "running", status

    # A command other than stop cannot be logged: refused, with why; a stop still works.
    rec = client.send("set_grad_clip", max_norm=2.0)
    assert rec.status.value == "rejected" and "cannot be written" in (rec.message or "")
    client.stop()
    final = handle.wait(timeout=60)
    assert final is not None and final["status"] == "stopped"

    # Nothing acknowledged is lost; nothing half-written is left.
    ys = client.read_rows("live", columns=["y"]).column("y").to_numpy()
    np.testing.assert_array_equal(ys, np.arange(acked[-1]["last"] + 1, dtype=np.float32))
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    for line in (run_dir / "commands.jsonl").read_text().splitlines():
        json.loads(line)
