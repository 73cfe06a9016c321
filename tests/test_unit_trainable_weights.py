"""saved_weights="trainable": a frozen base is neither checkpointed nor published, only
what trains (a LoRA adapter), and nothing that would change the base is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ray_interactive.core.commands import LoadCheckpoint, PublishWeights, SaveCheckpoint, UpdateModule
from ray_interactive.core.config import RunConfig
from ray_interactive.core.state import OwnSchedule, TrainState
from ray_interactive.core.steering import Frontend, Steering
from ray_interactive.core.weights import LocalPublisher, WeightRegistry, load_version, unpack_state

from .conftest import Recorder
from .test_unit_core import train_steps


def base_and_head(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)  # the same base every time, as a task's pretrained model
    model = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 1))
    model[0].requires_grad_(False)
    model[1].requires_grad_(False)
    return model


def core_for(tmp_path: Path, saved_weights: str = "trainable") -> tuple[Steering, WeightRegistry]:
    model = base_and_head()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    cfg = RunConfig(name="adapter", run_dir=tmp_path / "run", grad_clip=None, saved_weights=saved_weights)
    registry = WeightRegistry(keep=4)
    core = Steering(cfg, model, opt, TrainState(schedule=OwnSchedule.starting(opt)), Recorder().reporter,
                    Frontend("loop"), publisher=LocalPublisher(registry))
    return core, registry


def test_checkpoints_hold_only_what_trains_and_load_it_back_exactly(tmp_path: Path) -> None:
    core, _ = core_for(tmp_path)
    assert core.saved_names == {"2.weight", "2.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"}
    train_steps(core, 3)
    core.apply(SaveCheckpoint(tag="a"))
    with safe_open(str(tmp_path / "run" / "checkpoints" / "main@3" / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == core.saved_names  # the base Linear(4, 64) is not in it
    kept = {k: v.clone() for k, v in core.model.state_dict().items()}
    train_steps(core, 4)
    assert not torch.equal(kept["2.weight"], core.model.state_dict()["2.weight"])
    core.apply(LoadCheckpoint(checkpoint_id="main@3", branch="b"))
    assert all(torch.equal(v, core.model.state_dict()[k]) for k, v in kept.items())


def test_a_full_checkpoint_still_loads_into_such_a_run(tmp_path: Path) -> None:
    full, _ = core_for(tmp_path, saved_weights="all")
    train_steps(full, 2)
    full.apply(SaveCheckpoint())
    kept = {k: v.clone() for k, v in full.model.state_dict().items()}
    core, _ = core_for(tmp_path)
    core.apply(LoadCheckpoint(checkpoint_id="main@2", branch="b"))
    assert all(torch.equal(v, core.model.state_dict()[k]) for k, v in kept.items())


def test_published_versions_carry_only_what_trains_and_load_over_the_base(tmp_path: Path) -> None:
    core, registry = core_for(tmp_path)
    train_steps(core, 3)
    core.apply(PublishWeights())
    version = registry.latest()
    assert version is not None and version.partial
    state = unpack_state(version.ref)
    assert set(state) == core.saved_names
    assert version.num_params < 200  # 64 + 1 + norm statistics, not the base's 320
    replica = base_and_head().eval()
    load_version(replica, state, version)
    assert all(torch.equal(v, replica.state_dict()[k]) for k, v in core.model.state_dict().items())
    other = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 2),
                                torch.nn.Linear(2, 1))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_version(other, state, version)
    with pytest.raises(ValueError, match="does not fit this model: it has no 2.weight"):
        load_version(torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.BatchNorm1d(64)), state, version)


def test_commands_that_would_change_the_base_are_refused_with_why(tmp_path: Path) -> None:
    core, _ = core_for(tmp_path)
    with pytest.raises(ValueError, match=r"unfreeze of '0' would change the fixed base \(2 tensor\(s\), e.g. 0.weight"):
        core.apply(UpdateModule(module="0", op="unfreeze"))
    with pytest.raises(ValueError, match="reset_parameters of '0' would change the fixed base"):
        core.apply(UpdateModule(module="0", op="reset_parameters"))
    assert not core.model[0].weight.requires_grad
    assert core.apply(UpdateModule(module="2", op="reset_parameters"))  # what trains may be reset
