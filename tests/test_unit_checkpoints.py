"""Checkpoint files: round trip of weights (tied), optimizer state and RNGs; ids; listing."""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ray_interactive.core.checkpoints import (
    CheckpointInfo,
    checkpoint_id,
    list_checkpoints,
    read_checkpoint,
    write_checkpoint,
)


class Tied(nn.Module):
    """Two linear layers sharing one weight matrix (like tied embeddings)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.dec = nn.Linear(4, 4)
        self.dec.weight = self.enc.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(torch.relu(self.enc(x)))


def trained(seed: int) -> tuple[Tied, torch.optim.AdamW]:
    torch.manual_seed(seed)
    model = Tied()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    opt.step()
    return model, opt


def info(cid: str, step: int = 5, created_at: float | None = None) -> CheckpointInfo:
    return CheckpointInfo(id=cid, branch="main", step=step, created_at=created_at or time.time(), reason="command", tag="t")


def test_checkpoint_round_trip_restores_tied_weights_optimizer_state_and_rngs(tmp_path: Path) -> None:
    model, opt = trained(0)
    state = {"step": 5, "branch": "main", "schedule": {"kind": "constant"}, "position": {"batches": 9}}
    path = write_checkpoint(tmp_path, info("main@5"), model, opt, state)
    assert path == tmp_path / "main@5"
    assert not (tmp_path / "main@5.tmp").exists()
    expected_torch = torch.rand(5)
    expected_np = np.random.rand(3)
    expected_py = random.random()

    fresh, fresh_opt = trained(123)  # different weights and optimizer state
    assert not torch.equal(fresh.enc.weight, model.enc.weight)
    torch.rand(17)  # move the RNGs on
    np.random.rand(4)
    random.random()

    restored = read_checkpoint(path, fresh, fresh_opt, torch.device("cpu"))
    assert restored == state
    for name, p in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], p), name
    assert fresh.dec.weight is fresh.enc.weight  # still tied after loading
    sd, fresh_sd = opt.state_dict(), fresh_opt.state_dict()
    assert sd["param_groups"] == fresh_sd["param_groups"]
    assert sd["state"].keys() == fresh_sd["state"].keys() and len(sd["state"]) == 3
    for k, s in sd["state"].items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(fresh_sd["state"][k][name], s[name]), (k, name)
    assert torch.equal(torch.rand(5), expected_torch)
    assert np.array_equal(np.random.rand(3), expected_np)
    assert random.random() == expected_py


def test_restored_model_trains_like_the_original(tmp_path: Path) -> None:
    model, opt = trained(0)
    path = write_checkpoint(tmp_path, info("main@5"), model, opt, {})
    x = torch.randn(8, 4)
    fresh, fresh_opt = trained(1)
    read_checkpoint(path, fresh, fresh_opt, torch.device("cpu"))
    for m, o in ((model, opt), (fresh, fresh_opt)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    assert torch.equal(model.enc.weight, fresh.enc.weight)
    assert torch.equal(model.dec.bias, fresh.dec.bias)


def test_reading_into_a_different_model_is_refused(tmp_path: Path) -> None:
    model, opt = trained(0)
    path = write_checkpoint(tmp_path, info("main@5"), model, opt, {})
    other = nn.Linear(4, 4)
    with pytest.raises((ValueError, RuntimeError)):
        read_checkpoint(path, other, torch.optim.AdamW(other.parameters()), torch.device("cpu"))


def test_list_checkpoints_ignores_unfinished_tmp_directories(tmp_path: Path) -> None:
    model, opt = trained(0)
    write_checkpoint(tmp_path, info("main@5", created_at=2.0), model, opt, {})
    write_checkpoint(tmp_path, info("main@3", step=3, created_at=1.0), model, opt, {})
    # a crash mid-write leaves a complete-looking directory with the .tmp suffix
    leftover = write_checkpoint(tmp_path, info("main@9", step=9, created_at=3.0), model, opt, {})
    leftover.rename(tmp_path / "main@9.tmp")
    (tmp_path / "stray-file").write_text("x")
    (tmp_path / "empty-dir").mkdir()
    infos = list_checkpoints(tmp_path)
    assert [i.id for i in infos] == ["main@3", "main@5"]  # oldest first
    assert infos[1] == info("main@5", created_at=2.0)
    assert list_checkpoints(tmp_path / "missing") == []


def test_write_checkpoint_replaces_a_leftover_tmp_directory(tmp_path: Path) -> None:
    model, opt = trained(0)
    (tmp_path / "main@5.tmp").mkdir()
    (tmp_path / "main@5.tmp" / "junk").write_text("half written")
    path = write_checkpoint(tmp_path, info("main@5"), model, opt, {})
    assert not (path / "junk").exists()
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "optimizer.pt", "rng.safetensors", "state.json"]


def test_checkpoint_id_is_branch_at_step_with_suffix_on_repeats(tmp_path: Path) -> None:
    assert checkpoint_id(tmp_path, "main", 5) == "main@5"
    (tmp_path / "main@5").mkdir()
    assert checkpoint_id(tmp_path, "main", 5) == "main@5.2"
    (tmp_path / "main@5.2").mkdir()
    assert checkpoint_id(tmp_path, "main", 5) == "main@5.3"
    assert checkpoint_id(tmp_path, "main", 6) == "main@6"
    assert checkpoint_id(tmp_path, "b-1", 5) == "b-1@5"


def test_a_run_checkpoints_every_interval_by_default_and_a_failed_write_is_an_event(tmp_path: Path) -> None:
    import time

    from ray_interactive.core.config import RunConfig

    from .test_unit_core import core_for, train_steps

    assert RunConfig(name="x").checkpoint_interval_s == 300.0  # on by default
    core, calls = core_for(tmp_path, config={"checkpoint_interval_s": 0.05})
    train_steps(core, 1)
    core.after_step()
    assert not core.checkpoints.known  # not yet: the interval starts with the run
    time.sleep(0.06)
    core.after_step()
    assert [c.reason for c in core.checkpoints.known.values()] == ["periodic"]

    # The next one cannot be written (its directory is under a file: fails even for root):
    # an entry in the history with why, nothing half-written, and the run goes on.
    (tmp_path / "afile").write_text("")
    good = core.checkpoints.dir
    core.checkpoints.dir = tmp_path / "afile" / "checkpoints"
    time.sleep(0.06)
    core.after_step()
    core.checkpoints.dir = good
    assert len(core.checkpoints.known) == 1 and not list(good.glob("*.tmp"))
    core.telemetry.report(force=True)  # events ride along with the next report
    events = [e.model_dump() for e in calls.run_events()]
    assert events and events[-1]["kind"] == "checkpoint_failed" and events[-1]["failed"]
    assert "periodic checkpoint at step 1 not written" in events[-1]["message"]
    train_steps(core, 2)
    assert core.state.step == 3
