"""The steering core without Ray: each command's effect on a plain model and optimizer,
and the train state's checkpoint / load / failed-load round trip over every field."""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import get_linear_schedule_with_warmup

from ray_interactive.core.commands import (
    KINDS,
    Cancel,
    Command,
    CommandBase,
    CommandRecord,
    CommandStatus,
    Evaluate,
    LoadCheckpoint,
    Pause,
    PublishWeights,
    Resume,
    SaveCheckpoint,
    SetDataMixture,
    SetGradAccumulation,
    SetGradClip,
    SetLRSchedule,
    Stop,
    UpdateModule,
    UpdateOptimizer,
)
from ray_interactive.core.config import RunConfig
from ray_interactive.core.schedules import Schedule
from ray_interactive.core.state import OwnSchedule, RunStatus, TrainState
from ray_interactive.core.steering import Frontend, Steering
from ray_interactive.core.weights import LocalPublisher, WeightRegistry
from ray_interactive.train.hf import HFSchedule

from .conftest import Recorder as Calls
from .conftest import Trace


def model_and_optimizer(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 1))
    return model, torch.optim.AdamW(model.parameters(), lr=0.01)


def core_for(tmp_path: Path, schedule: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
             reporter: Any = None, **frontend: Any) -> tuple[Steering, Calls]:
    model, opt = model_and_optimizer()
    cfg = RunConfig(name="core", run_dir=tmp_path / "run", grad_clip=None, **(config or {}))
    state = TrainState(schedule=OwnSchedule.starting(opt, **(schedule or {})))
    calls = Calls()
    fe = Frontend("loop", **frontend)
    return Steering(cfg, model, opt, state, reporter or calls.reporter, fe,
                    publisher=LocalPublisher(WeightRegistry(keep=4))), calls


def train_steps(core: Steering, n: int) -> None:
    """n optimizer steps through the core's control point (what every front-end does)."""
    for _ in range(n):
        core.begin_step()
        x = torch.randn(16, 4)
        loss = core.model(x).pow(2).mean()
        loss.backward()
        core.clip()
        core.optimizer.step()
        core.optimizer.zero_grad(set_to_none=True)
        core.record_step(16, 0.0, loss=loss.detach())
        core.poll()


def test_every_command_kind_has_exactly_one_effect() -> None:
    kinds = set(typing.get_args(typing.get_args(Command)[0]))
    assert kinds == set(KINDS.values()), "a kind outside the union (or in it but not registered)"
    # a loop's kind applies on the steering core; a controller's kind (the rollout) there only
    without = [k for k, cls in KINDS.items()
               if (cls.apply_rollout is CommandBase.apply_rollout if cls.in_controller else cls.apply is CommandBase.apply)]
    assert not without, f"command kinds without an effect: {without}"
    both = [k for k, cls in KINDS.items()
            if cls.apply is not CommandBase.apply and cls.apply_rollout is not CommandBase.apply_rollout]
    assert not both, f"command kinds with two effects: {both}"


def test_lr_command_is_used_by_the_very_next_step_and_the_schedule_keeps_its_shape(tmp_path: Path) -> None:
    core, _ = core_for(tmp_path, {"kind": "linear", "steps": 100})
    train_steps(core, 10)
    assert core.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * (1 - 9 / 100))
    assert core.apply(UpdateOptimizer(params={"lr": 0.002})) == "set lr=0.002 on group0"
    core.begin_step()
    assert core.optimizer.param_groups[0]["lr"] == 0.002  # exactly, at step 10
    # decays from there with the same shape: lr(step) / lr(10) as in the original schedule
    core.state.step = 55
    core.begin_step()
    assert core.optimizer.param_groups[0]["lr"] == pytest.approx(0.002 * (1 - 55 / 100) / (1 - 10 / 100))


def test_schedule_clip_accumulation_pause_resume_stop(tmp_path: Path) -> None:
    core, _ = core_for(tmp_path)
    train_steps(core, 3)
    assert core.apply(SetLRSchedule(schedule="cosine", steps=10)) == "cosine schedule from step 3"
    assert core.state.schedule.to_dict()["kind"] == "cosine" and core.state.schedule.to_dict()["start_step"] == 3
    core.state.step = 13
    core.begin_step()
    assert core.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)

    assert core.apply(SetGradClip(max_norm=1e-3)) == "clip grad norm at 0.001"
    core.model(torch.randn(8, 4)).pow(2).mean().mul(1e3).backward()
    norm = core.clip()
    assert float(norm) > 1e-3
    clipped = torch.nn.utils.get_total_norm([p.grad for p in core.model.parameters()])
    assert float(clipped) == pytest.approx(1e-3, rel=1e-3)

    assert core.apply(SetGradAccumulation(steps=4)) == "4 micro-batches per step" and core.state.grad_accumulation == 4
    assert core.apply(Pause()) == "paused" and core.state.status is RunStatus.PAUSED
    assert core.apply(Pause()) == "already paused"
    assert core.apply(Resume()) == "resumed" and core.state.status is RunStatus.RUNNING
    assert core.apply(Stop()) == "stopping: final checkpoint follows" and core.state.status is RunStatus.STOPPING


def test_modules_evaluate_publish_and_unsupported_kinds(tmp_path: Path) -> None:
    core, _ = core_for(tmp_path, evaluate=lambda: {"loss": 1.5, "eval/acc": 0.25},
                       unsupported={"set_data_mixture": "no mixture in this loop"})
    assert core.apply(UpdateModule(module="0", op="freeze")) == "freeze 40 parameters"
    assert not any(p.requires_grad for p in core.model[0].parameters()) and len(core.params) == 2
    assert core.apply(UpdateModule(module="1", op="set_attribute", attribute="p", value=0.3)) == "p: 0.1 -> 0.3"
    assert core.model[1].p == 0.3
    assert core.apply(Evaluate()) == "eval/loss=1.5, eval/acc=0.25"
    assert core.apply(PublishWeights()) == "published weights version 1 at step 0"
    with pytest.raises(ValueError, match="no mixture in this loop"):
        core.apply(SetDataMixture(weights={"a": 1.0}))
    core.frontend.evaluate = None
    with pytest.raises(ValueError, match="this run has no evaluation"):
        core.apply(Evaluate())


def test_cancel_withdraws_a_pending_command(tmp_path: Path) -> None:
    core, calls = core_for(tmp_path)
    core.deliver([CommandRecord(command=SetGradClip(max_norm=0.5, at_step=5), seq=1, status=CommandStatus.ACCEPTED),
                  CommandRecord(command=Cancel(seq=1, command_id="x"), seq=2, status=CommandStatus.ACCEPTED)])
    core.poll()
    outcomes = {r.seq: r for r in calls.outcome_records()}
    assert outcomes[1].status.value == "cancelled" and outcomes[2].message == "cancelled #1 set_grad_clip"
    train_steps(core, 6)
    assert core.state.grad_clip is None


def test_save_and_load_as_a_branch_restores_weights_optimizer_and_step(tmp_path: Path) -> None:
    core, _ = core_for(tmp_path)
    train_steps(core, 4)
    saved = core.apply(SaveCheckpoint(tag="t"))
    assert saved == "saved main@4" and core.state.last_checkpoint == "main@4"
    weights = {k: v.clone() for k, v in core.model.state_dict().items()}
    train_steps(core, 3)
    assert core.apply(LoadCheckpoint(checkpoint_id="main@4", branch="b")).startswith("loaded main@4 (step 4) as branch b")
    assert core.state.step == 4 and core.state.branch == "b" and core.state.last_checkpoint == "main@4"
    assert all(torch.equal(v, core.model.state_dict()[k]) for k, v in weights.items())
    with pytest.raises(ValueError, match="no checkpoint 'main@99' in this run"):
        core.apply(LoadCheckpoint(checkpoint_id="main@99", branch="c"))


#: A value unlike the default for every persisted field of TrainState. Adding a field to
#: TrainState without adding it here fails the test below: the round trip covers it.
SAMPLES: dict[str, Any] = {
    "step": 17,
    "branch": "side",
    "samples_seen": 4242,
    "grad_clip": 0.75,
    "grad_accumulation": 3,
    "last_checkpoint": "main@9",
}


def test_checkpoint_load_and_failed_load_agree_on_every_state_field(tmp_path: Path) -> None:
    core, _ = core_for(tmp_path, {"kind": "cosine", "steps": 50, "warmup_steps": 2})
    assert set(TrainState.persisted()) == set(SAMPLES) | {"schedule"}, "give the new TrainState field a sample"
    train_steps(core, 5)
    for name, value in SAMPLES.items():
        setattr(core.state, name, value)
    core.apply(UpdateModule(module="0", op="freeze"))
    core.apply(UpdateModule(module="1", op="set_attribute", attribute="p", value=0.2))
    expected = core.checkpoints.doc()
    cid = core.checkpoints.save("command")

    # everything changes ...
    core.state.step, core.state.branch, core.state.samples_seen = 1, "other", 1
    core.state.grad_clip, core.state.grad_accumulation, core.state.last_checkpoint = None, 1, None
    core.state.schedule.load_dict(Schedule(base_lrs=(0.5,)).to_dict())
    core.apply(UpdateModule(module="0", op="unfreeze"))
    core.model[1].p = 0.0
    before = core.checkpoints.doc()

    # ... a load that fails half way (weights, optimizer and state read, then a module the
    # model lacks) leaves every field as it was
    import json
    import shutil

    bad = tmp_path / "run" / "checkpoints" / "broken"
    shutil.copytree(tmp_path / "run" / "checkpoints" / cid, bad)
    doc = json.loads((bad / "state.json").read_text())
    doc["state"]["module_attributes"] = {"9": {"p": 0.5}}
    (bad / "state.json").write_text(json.dumps(doc))
    with pytest.raises(AttributeError):
        core.checkpoints.load(bad)
    assert core.checkpoints.doc() == before

    # ... and a good load brings every field of the checkpoint back
    core.checkpoints.load(tmp_path / "run" / "checkpoints" / cid)
    after = core.checkpoints.doc()
    assert {k: v for k, v in after.items() if k != "last_checkpoint"} == {
        k: v for k, v in expected.items() if k != "last_checkpoint"
    }
    assert after["last_checkpoint"] == cid  # the load's own checkpoint is the lineage's newest now
    assert [p.requires_grad for p in core.model[0].parameters()] == [False, False] and core.model[1].p == 0.2


def test_hf_schedule_takes_an_lr_at_the_next_step_and_round_trips(tmp_path: Path) -> None:
    model, opt = model_and_optimizer()
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=2, num_training_steps=20)
    lr = HFSchedule(sched, opt)

    def hf_step() -> float:  # HF's order: optimizer step (at the group lr), then scheduler step
        used = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        return used

    used = [hf_step() for _ in range(6)]
    assert used[:3] == pytest.approx([0.0, 0.005, 0.01])
    lr.set_lrs(6, {0: 0.004})
    assert sched.get_last_lr()[0] == 0.004  # what HF logs as learning_rate for the next step
    nxt = [hf_step() for _ in range(3)]
    assert nxt[0] == 0.004  # the very next step, exactly
    assert nxt[1] / nxt[0] == pytest.approx((20 - 7) / (20 - 6))  # the linear decay goes on from the new lr
    saved = lr.to_dict()
    assert lr.start("constant", 9, None, 0.0, 0.1, 0) == "constant schedule from step 9 (replaces the Trainer's scheduler lambdas)"
    assert [hf_step() for _ in range(2)] == pytest.approx([nxt[2] * (20 - 9) / (20 - 8)] * 2)
    lr.load_dict(saved)  # back to HF's own lambda at the saved epoch
    assert hf_step() == pytest.approx(nxt[2] * (20 - 9) / (20 - 8))
    assert math.isclose(hf_step(), nxt[2] * (20 - 10) / (20 - 8))


def test_lr_commands_reach_the_step_being_computed_but_wait_behind_other_kinds(tmp_path: Path) -> None:
    core, calls = core_for(tmp_path)
    core.deliver([CommandRecord(command=UpdateOptimizer(params={"lr": 0.005}), seq=1, status=CommandStatus.ACCEPTED)])
    core.poll_before_step()  # gradients are ready: this optimizer step uses the new lr
    assert core.optimizer.param_groups[0]["lr"] == 0.005
    core.deliver([CommandRecord(command=SaveCheckpoint(), seq=2, status=CommandStatus.ACCEPTED),
                  CommandRecord(command=UpdateOptimizer(params={"lr": 0.001}), seq=3, status=CommandStatus.ACCEPTED)])
    core.poll_before_step()  # a save (not an optimizer setting) comes first: both wait, in order
    assert core.optimizer.param_groups[0]["lr"] == 0.005 and core.state.last_checkpoint is None
    core.poll()  # between steps: both, in order
    assert core.optimizer.param_groups[0]["lr"] == 0.001 and core.state.last_checkpoint == "main@0"
    applied = [r.seq for r in calls.outcome_records()]
    assert applied == [1, 2, 3]


def test_the_final_status_leaves_only_after_every_earlier_report_arrived(tmp_path: Path) -> None:
    """Reports are separate calls a threaded controller may reorder: had "stopped" come
    before the outcome of the stop, the controller would fail the stop the loop applied.
    So the last status is sent only once every earlier report has been waited for."""
    from ray_interactive.core.messages import Outcomes, Progress

    trace = Trace()
    core, _ = core_for(tmp_path, reporter=trace.reporter)
    core.deliver([CommandRecord(command=Stop(), seq=1, status=CommandStatus.ACCEPTED)])
    core.poll()
    assert core.state.stopping
    core.finish()
    stop_sent = next(i for i, r in trace.sent(Outcomes) if [x.kind for x in r.records] == ["stop"])
    final = next(i for i, r in trace.sent(Progress) if r.status.status is RunStatus.STOPPED)
    assert any(what == "waited" and stop_sent in r for what, r in trace.events[stop_sent:final - 1]), trace.events


def test_a_checkpoints_metrics_are_reported_at_once_and_waited_for(tmp_path: Path) -> None:
    """A periodic checkpoint is a resume point: the report with its rows and its news leaves
    at once (not at the next interval) and the loop goes on only once the controller has
    answered it (with the metrics on disk): workers that die a few steps later lose none."""
    from ray_interactive.core.messages import CheckpointSaved, Progress

    trace = Trace()
    core, _ = core_for(tmp_path, config={"checkpoint_every": 2, "metrics_interval_s": 60.0}, reporter=trace.reporter)
    core.start()
    for _ in range(3):
        train_steps(core, 1)
        core.after_step()
    reports = trace.sent(Progress)
    at_checkpoint = [(i, r) for i, r in reports if any(isinstance(e, CheckpointSaved) for e in r.events)]
    assert len(at_checkpoint) == 1, trace.events
    i, report = at_checkpoint[0]
    assert report.status.step == 2
    assert [row[0] for j, r in reports if j <= i for row in r.rows] == [1, 2]  # with it or before it
    assert trace.waited_for(i), trace.events  # answered before step 3
    assert reports[-1][0] == i  # step 3: no report before the interval
