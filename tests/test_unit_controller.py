"""The controller as a plain class: validation, numbering, delivery, log and recovery (no Ray)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ray_interactive.core.checkpoints import CheckpointInfo
from ray_interactive.core.commands import (
    CommandRecord,
    CommandStatus,
    LoadCheckpoint,
    Pause,
    SaveCheckpoint,
    Stop,
    UpdateModule,
    UpdateOptimizer,
)
from ray_interactive.core.config import RunConfig, TaskSpec
from ray_interactive.core.controller import Controller
from ray_interactive.core.messages import BranchCreated, Outcomes, Progress, Snapshot, TrainerStatus
from ray_interactive.examples.regression import RegressionTask

from .conftest import snapshot_of

REGRESSION = "ray_interactive.examples.regression:RegressionTask"


def make_config(run_dir: Path) -> RunConfig:
    return RunConfig(name="unit", task=TaskSpec(target=REGRESSION), run_dir=run_dir)


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    task = RegressionTask(in_dim=4, width=8, depth=1)
    model = task.build_model()
    opt = task.build_optimizer(model, 1e-3)
    return snapshot_of(model, opt)


class Harness:
    """A controller, and what a training loop pulling its commands has received."""

    def __init__(self, run_dir: Path, recover: bool = False) -> None:
        self.controller = Controller(make_config(run_dir), recover=recover)
        self._got: list[CommandRecord] = []
        self._after = 0
        self.incarnation = 0  # which start of the trainer is polling

    @property
    def delivered(self) -> list[CommandRecord]:
        """Every command the loop's polls have brought so far (a poll is made now)."""
        records = self.controller.pull(self._after, self.incarnation).records
        self._got.extend(records)
        self._after = max([self._after, *(r.seq or 0 for r in records)])
        return self._got


def outcomes(records: list[CommandRecord], status: TrainerStatus | None = None, incarnation: int = 0) -> Outcomes:
    return Outcomes(records=records, status=status, incarnation=incarnation)


def progress(branch: str, status: TrainerStatus, rows: list[Any], incarnation: int = 0) -> Progress:
    return Progress(branch=branch, status=status, rows=rows, incarnation=incarnation)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path / "run")
    yield h
    h.controller.close()


def log_lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "commands.jsonl").read_text().splitlines()]


def test_config_is_saved_in_the_run_dir(harness: Harness, tmp_path: Path) -> None:
    assert RunConfig.load(tmp_path / "run" / "config.json") == harness.controller.config


def test_optimizer_update_before_the_trainer_is_up_is_rejected(harness: Harness) -> None:
    rec = harness.controller.submit(UpdateOptimizer(params={"lr": 1e-4}))
    assert rec.status is CommandStatus.REJECTED
    assert rec.seq is None
    assert "still starting" in (rec.message or "")
    assert harness.delivered == []
    # commands that need no trainer description are fine meanwhile
    assert harness.controller.submit(Pause()).status is CommandStatus.ACCEPTED


def test_valid_commands_are_numbered_and_delivered_in_order(harness: Harness, snapshot: Snapshot) -> None:
    c = harness.controller
    c.trainer_snapshot(snapshot)
    cmds = [
        UpdateOptimizer(params={"lr": 1e-4, "weight_decay": 0.05}, group="decay"),
        UpdateModule(module="3", op="set_attribute", attribute="p", value=0.25),  # the Dropout
        Pause(),
    ]
    recs = [c.submit(cmd) for cmd in cmds]
    assert [r.status for r in recs] == [CommandStatus.ACCEPTED] * 3, [r.message for r in recs]
    assert [r.seq for r in recs] == [1, 2, 3]
    assert [r.seq for r in harness.delivered] == [1, 2, 3]
    assert [r.command for r in harness.delivered] == cmds
    assert c.next_seq == 4
    assert c.get_command(cmds[1].id) == recs[1]


def test_invalid_commands_after_the_snapshot_are_rejected_with_reasons(harness: Harness, snapshot: Snapshot) -> None:
    c = harness.controller
    c.trainer_snapshot(snapshot)
    bad = {
        "update_optimizer_momentum": ({"kind": "update_optimizer", "params": {"momentum": 0.9}}, "unknown hyperparameter 'momentum'"),
        "group": ({"kind": "update_optimizer", "params": {"lr": 1e-3}, "group": "x"}, "no param group named 'x'; groups: decay, no_decay"),
        "module": ({"kind": "update_module", "module": "99", "op": "freeze"}, "no module named '99'"),
        "attr": ({"kind": "update_module", "module": "1", "op": "set_attribute", "attribute": "p", "value": 0.1}, "cannot be set"),
        "dropout_bounds": ({"kind": "update_module", "module": "3", "op": "set_attribute", "attribute": "p", "value": 1.5}, "p must be in [0, 1], not 1.5"),
        "no_params": ({"kind": "update_module", "module": "2", "op": "freeze"}, "has no parameters to freeze"),
        "unknown_kind": ({"kind": "fly"}, "unknown command kind 'fly'"),
        "not_json": ("{nope", "not valid JSON"),
        "ckpt": ({"kind": "load_checkpoint", "checkpoint_id": "main@1"}, "no checkpoint with id 'main@1'; the run has no checkpoints yet"),
        "mixture": ({"kind": "set_data_mixture", "weights": {"a": 1.0}}, "unknown data source(s) 'a'; sources: base"),
    }
    for name, (payload, message) in bad.items():
        rec = c.submit(payload)
        assert rec.status is CommandStatus.REJECTED, name
        assert message in (rec.message or ""), (name, rec.message)
        assert rec.seq is None
    assert harness.delivered == []
    assert c.next_seq == 1


def test_a_repeated_command_id_returns_the_first_record_and_is_not_delivered_twice(
    harness: Harness, snapshot: Snapshot
) -> None:
    c = harness.controller
    c.trainer_snapshot(snapshot)
    cmd = UpdateOptimizer(params={"lr": 1e-4})
    first = c.submit(cmd)
    again = c.submit(cmd)
    as_dict = c.submit(cmd.model_dump(mode="json"))
    assert first.status is CommandStatus.ACCEPTED
    assert again == first and as_dict == first
    assert len(harness.delivered) == 1
    assert c.next_seq == 2
    assert len(log_lines(c.run_dir)) == 1


def test_after_stop_further_commands_are_rejected(harness: Harness) -> None:
    c = harness.controller
    assert c.submit(Stop()).status is CommandStatus.ACCEPTED
    rec = c.submit(Pause())
    assert rec.status is CommandStatus.REJECTED
    assert "stopping" in (rec.message or "")
    assert c.submit(Stop()).status is CommandStatus.REJECTED
    assert len(harness.delivered) == 1


def test_commands_jsonl_has_one_line_per_record_event(harness: Harness, snapshot: Snapshot) -> None:
    c = harness.controller
    r1 = c.submit(UpdateOptimizer(params={"lr": 1e-4}))  # rejected: still starting
    c.trainer_snapshot(snapshot)
    r2 = c.submit(UpdateOptimizer(params={"lr": 1e-4}))
    r3 = c.submit({"kind": "nope"})  # unparseable
    applied = r2.model_copy(update={"status": CommandStatus.APPLIED, "applied_step": 7, "message": "lr 1e-4"})
    c.command_outcomes(outcomes([applied]))
    lines = log_lines(c.run_dir)
    assert len(lines) == 4
    assert [x["status"] for x in lines] == ["rejected", "accepted", "rejected", "applied"]
    assert lines[0]["command"]["id"] == r1.id
    assert lines[1]["seq"] == 1 and lines[3]["seq"] == 1 and lines[3]["applied_step"] == 7
    assert lines[2]["command"] is None and lines[2]["payload"] == {"kind": "nope"}
    assert r3.status is CommandStatus.REJECTED
    assert c.get_command(r2.id).status is CommandStatus.APPLIED  # type: ignore[union-attr]
    assert [row["status"] for row in c.commands()] == ["rejected", "applied", "rejected"]


def test_recovery_restores_records_continues_numbering_and_fails_unapplied_commands(
    tmp_path: Path, snapshot: Snapshot
) -> None:
    run_dir = tmp_path / "run"
    h = Harness(run_dir)
    c = h.controller
    c.trainer_snapshot(snapshot)
    done = c.submit(UpdateOptimizer(params={"lr": 1e-4}))
    pending = c.submit(SaveCheckpoint(tag="later"))
    rejected = c.submit(UpdateOptimizer(params={"nope": 1}))
    c.command_outcomes(outcomes([done.model_copy(update={"status": CommandStatus.APPLIED, "applied_step": 3})]))
    c.close()

    h2 = Harness(run_dir, recover=True)
    c2 = h2.controller
    try:
        assert c2.next_seq == 3
        assert c2.get_command(done.id).status is CommandStatus.APPLIED  # type: ignore[union-attr]
        failed = c2.get_command(pending.id)
        assert failed is not None and failed.status is CommandStatus.FAILED
        assert "ended before it was applied" in (failed.message or "")
        assert c2.get_command(rejected.id).status is CommandStatus.REJECTED  # type: ignore[union-attr]
        new = c2.submit(Pause())
        assert new.status is CommandStatus.ACCEPTED and new.seq == 3
        assert [r.seq for r in h2.delivered] == [3]
        # the recovered controller appends to the same log
        assert log_lines(run_dir)[-1]["command"]["id"] == new.command.id  # type: ignore[union-attr]
    finally:
        c2.close()


def test_load_checkpoint_without_a_branch_gets_a_fresh_unique_branch_name(harness: Harness) -> None:
    c = harness.controller
    c.checkpoint_saved(CheckpointInfo(id="main@5", branch="main", step=5, created_at=1.0, reason="command"))
    c.branch_created(BranchCreated(name="main-1", parent="main", checkpoint="main@2", step=2))  # the first generated name is taken
    r1 = c.submit(LoadCheckpoint(checkpoint_id="main@5"))
    r2 = c.submit(LoadCheckpoint(checkpoint_id="main@5"))
    assert r1.status is CommandStatus.ACCEPTED and r2.status is CommandStatus.ACCEPTED
    assert isinstance(r1.command, LoadCheckpoint) and isinstance(r2.command, LoadCheckpoint)
    assert r1.command.branch == "main-2"
    assert r2.command.branch == "main-3"  # reserved at submission, not reused
    assert [r.command.branch for r in harness.delivered] == ["main-2", "main-3"]  # type: ignore[union-attr]
    # a named branch that was generated already is refused
    r3 = c.submit(LoadCheckpoint(checkpoint_id="main@5", branch="main-3"))
    assert r3.status is CommandStatus.REJECTED and "already exists" in (r3.message or "")
    assert json.loads((c.run_dir / "branches.json").read_text())["main-1"]["fork_step"] == 2


def test_lineage_and_metrics_follow_the_branch_tree(harness: Harness) -> None:
    c = harness.controller
    c.trainer_progress(progress("main", TrainerStatus(status="running", step=30, time=1.0, branch="main"),
                                [(k, float(k), {"loss": float(k)}) for k in range(1, 31)]))
    c.branch_created(BranchCreated(name="b", parent="main", checkpoint="main@20", step=20))
    c.trainer_progress(progress("b", TrainerStatus(status="running", step=25, time=2.0, branch="b"),
                                [(k, float(k), {"loss": -float(k)}) for k in range(21, 26)]))
    assert c.lineage("b") == [("main", 20), ("b", None)]
    out = c.get_metrics("b", include_ancestors=True)["loss"]
    assert out["step"] == list(range(1, 26))
    assert out["value"][19:] == [20.0, -21.0, -22.0, -23.0, -24.0, -25.0]
    assert c.get_metrics("b")["loss"]["step"] == list(range(21, 26))
    assert c.status()["step"] == 25
    with pytest.raises(ValueError, match="no branch 'zzz'"):
        c.get_metrics("zzz")


def test_generated_branch_name_is_a_valid_name_and_survives_recovery(tmp_path: Path) -> None:
    config = RunConfig(name="unit", task=TaskSpec(target="ray_interactive.examples.regression:RegressionTask"), run_dir=tmp_path)
    c = Controller(config)
    branch = "b" * 64  # a valid name of the maximum length
    c.checkpoint_saved(CheckpointInfo(id=f"{branch}@5", branch=branch, step=5, created_at=1.0, reason="command"))
    rec = c.submit(LoadCheckpoint(checkpoint_id=f"{branch}@5"))
    c.close()
    assert rec.status is CommandStatus.ACCEPTED
    assert isinstance(rec.command, LoadCheckpoint) and rec.command.branch is not None
    assert len(rec.command.branch) <= 64
    recovered = Controller(config, recover=True)
    try:
        assert recovered.get_command(rec.command.id) is not None
    finally:
        recovered.close()


def test_a_rejected_command_can_be_retried_with_the_same_id(tmp_path: Path) -> None:
    c = Controller(make_config(tmp_path))
    cmd = {"kind": "update_optimizer", "id": "retry-me", "params": {"lr": 1e-4}}
    assert c.submit(cmd).status is CommandStatus.REJECTED  # no trainer snapshot yet
    model = RegressionTask().build_model()
    opt = RegressionTask().build_optimizer(model, 1e-3)
    c.trainer_snapshot(snapshot_of(model, opt))
    again = c.submit(cmd)
    assert again.status is CommandStatus.ACCEPTED and again.seq == 1
    assert c.submit(cmd) is again  # but an accepted one is not queued twice
    c.close()


def status_at(step: int, status: str = "running", branch: str = "main") -> TrainerStatus:
    import time

    return TrainerStatus(status=status, step=step, branch=branch, time=time.time())


def applied(rec: CommandRecord, step: int) -> CommandRecord:
    import time

    return rec.model_copy(update={
        "status": CommandStatus.APPLIED, "applied_step": step, "applied_at": time.time(), "branch": "main",
    })


def test_a_trainer_restart_reapplies_what_followed_the_checkpoint_and_holds_new_commands(
    harness: Harness, snapshot: Snapshot
) -> None:
    import time

    c = harness.controller
    c.trainer_snapshot(snapshot)
    c.trainer_progress(progress("main", status_at(5), []))
    before = c.submit(UpdateOptimizer(params={"lr": 1e-4}))
    c.command_outcomes(outcomes([applied(before, 5)]))
    time.sleep(0.01)
    ckpt = CheckpointInfo(id="main@10", branch="main", step=10, created_at=time.time(), reason="periodic")
    (c.run_dir / "checkpoints" / ckpt.id).mkdir(parents=True)
    (c.run_dir / "checkpoints" / ckpt.id / "state.json").write_text(json.dumps({"info": ckpt.to_dict()}))
    time.sleep(0.01)
    after = c.submit(UpdateOptimizer(params={"lr": 2e-4}))
    c.command_outcomes(outcomes([applied(after, 12)]))
    pending = c.submit(Pause())  # accepted, never applied: the trainer died
    c.trainer_progress(progress("main", status_at(15), []))
    harness.delivered.clear()

    path, again, next_seq, incarnation = c.begin_recovery("SIGKILL")
    assert incarnation == 1  # the lost trainer's reports are ignored from now on
    harness.incarnation = incarnation
    assert path == str(c.run_dir / "checkpoints" / "main@10") and next_seq == 4
    assert [(r.id, r.command.at_step) for r in again] == [(after.id, 12)]  # type: ignore[union-attr]
    assert c.status()["status"] == "recovering" and "main@10" in c.status()["message"]
    held = c.submit(UpdateOptimizer(params={"lr": 3e-4}))
    assert held.status is CommandStatus.ACCEPTED and harness.delivered == []  # waits
    lines = len(log_lines(c.run_dir))
    # A worker of the lost group, still running for a moment, speaks no more for the run.
    c.trainer_progress(progress("main", status_at(16), []))
    assert c.recovery is not None and c.status()["status"] == "recovering"
    assert c.pull(0, incarnation=0).records == []

    # The re-applied command comes back: nothing is logged for it; back at step 15 it ends.
    c.command_outcomes(outcomes([applied(again[0], 12)], status_at(12), incarnation=1))
    assert len(log_lines(c.run_dir)) == lines and c.recovery is not None
    c.trainer_progress(progress("main", status_at(15), [], incarnation=1))
    assert c.recovery is None and c.status()["status"] == "running"
    assert [r.id for r in harness.delivered] == [pending.id, held.id]  # in order, to the trainer
    kinds = [r["kind"] for r in c.commands() if r["source"] == "system"]
    assert kinds == ["trainer_lost", "recovered"]
    recovered = [r for r in c.commands() if r["kind"] == "recovered"][0]["message"]
    assert "from when the loss was noticed" in recovered and "since the lost trainer's last report" in recovered


def test_a_re_applied_pause_ends_the_recovery_where_it_holds_the_trainer(harness: Harness, snapshot: Snapshot) -> None:
    c = harness.controller
    c.trainer_snapshot(snapshot)
    pause = c.submit(Pause())
    c.command_outcomes(outcomes([applied(pause, 8)], status_at(8, "paused")))
    c.trainer_progress(progress("main", status_at(8, "paused"), []))
    _, again, _, _ = c.begin_recovery("lost")  # no checkpoint: everything again, from the start
    assert [r.id for r in again] == [pause.id]
    c.trainer_progress(progress("main", status_at(3), [], incarnation=1))
    assert c.recovery is not None
    c.command_outcomes(outcomes([applied(again[0], 8)], status_at(8, "paused"), incarnation=1))
    assert c.recovery is None


def test_a_recovery_ends_when_the_last_outcome_comes_after_a_newer_status(harness: Harness, snapshot: Snapshot) -> None:
    """The threaded controller may handle the paused trainer's progress report before the
    outcome of the re-applied pause sent just before it (an older status): the recovery
    still ends then, not at a next report that a paused trainer may never send."""
    c = harness.controller
    c.trainer_snapshot(snapshot)
    pause = c.submit(Pause())
    c.command_outcomes(outcomes([applied(pause, 8)], status_at(8, "paused")))
    _, again, _, _ = c.begin_recovery("lost")
    older = status_at(8, "paused")
    c.trainer_progress(progress("main", status_at(8, "paused"), [], incarnation=1))  # the newer report first
    assert c.recovery is not None  # the pause's outcome has not come back yet
    c.command_outcomes(outcomes([applied(again[0], 8)], older, incarnation=1))
    assert c.recovery is None and [r["kind"] for r in c.commands() if r["source"] == "system"][-1] == "recovered"


def test_a_recovery_does_not_end_on_the_lost_trainers_own_status(harness: Harness, snapshot: Snapshot) -> None:
    """Until the restarted trainer reports a status, the status is the lost one's (at the
    step it died at): an outcome that comes first must not end the recovery on it."""
    c = harness.controller
    c.trainer_snapshot(snapshot)
    c.trainer_progress(progress("main", status_at(8), []))
    c.begin_recovery("lost")  # nothing to apply again
    c.command_outcomes(outcomes([], None, incarnation=1))
    assert c.recovery is not None
    c.trainer_progress(progress("main", status_at(3), [], incarnation=1))  # restarted, recomputing
    assert c.recovery is not None
    c.trainer_progress(progress("main", status_at(8), [], incarnation=1))
    assert c.recovery is None


def test_a_run_that_says_running_but_makes_no_step_is_stalled(tmp_path: Path) -> None:
    import time

    c = Controller(make_config(tmp_path / "run").model_copy(update={"stall_after_s": 0.2}))
    c.trainer_progress(progress("main", status_at(3), []))
    assert c.status()["status"] == "running"
    time.sleep(0.3)
    c.trainer_progress(progress("main", status_at(3), []))  # reports, but the step does not move
    st = c.status()
    assert st["status"] == "stalled" and "no step has completed" in st["message"] and st["samples_per_s"] == 0.0
    c.trainer_progress(progress("main", status_at(4), []))
    assert c.status()["status"] == "running"
    c.close()


def test_a_stop_for_a_failed_run_is_applied_at_once_and_asks_for_its_release(harness: Harness) -> None:
    c = harness.controller
    c.mark_failed("trainer lost")
    rec = c.submit(Stop())
    assert rec.status is CommandStatus.APPLIED and "already ended" in (rec.message or "")
    assert c.stop_requested and harness.delivered == []


def test_the_command_log_never_keeps_half_a_line_when_the_disk_is_full(tmp_path: Path) -> None:
    from .conftest import small_tmpfs

    with small_tmpfs(tmp_path / "fs", "64k") as mnt:
        c = Controller(make_config(mnt / "run"))
        accepted = []
        for i in range(2000):
            rec = c.submit(Pause(comment="x" * 200))
            if rec.status is CommandStatus.REJECTED:
                assert "cannot be written" in (rec.message or "") and rec.seq is None
                break
            accepted.append(rec)
            c.command_outcomes(outcomes([applied(rec, i)]))  # (some of these may be memory-only near the end)
        else:
            pytest.fail("the disk never filled")
        lines = log_lines(mnt / "run")  # every line parses: nothing half-written
        assert {r["command"]["id"] for r in lines if r["status"] == "accepted"} == {r.id for r in accepted}
        assert c.storage_error and "command log" in c.storage_error
        assert c.submit(Stop()).status is CommandStatus.ACCEPTED  # a stop works even now
        c.close()


def test_a_restarted_controller_says_recovering_until_the_loop_has_described_itself(
    tmp_path: Path, snapshot: Snapshot
) -> None:
    first = Controller(make_config(tmp_path / "run"))
    first.trainer_snapshot(snapshot)
    first.trainer_progress(progress("main", status_at(7), []))
    first.flush()
    first.close()

    c = Controller(make_config(tmp_path / "run"), recover="restart")  # Ray restarted it under a live loop
    try:
        st = c.status()
        assert st["status"] == "recovering" and "waits for the training loop to describe itself" in st["message"], st
        rejected = c.submit(UpdateOptimizer(params={"lr": 1e-4}))
        assert rejected.status is CommandStatus.REJECTED and "still starting" in (rejected.message or "")
        assert c.pull(0).describe  # the loop's next poll is asked to describe itself
        c.trainer_snapshot(snapshot)
        c.trainer_progress(progress("main", status_at(8), []))
        assert c.status()["status"] == "running"
        assert c.submit(UpdateOptimizer(params={"lr": 1e-4})).status is CommandStatus.ACCEPTED
    finally:
        c.close()


def test_a_late_report_does_not_bring_back_a_checkpoint_retention_removed(harness: Harness) -> None:
    """A threaded actor may run a later report first: retention's "removed" must not be
    undone by the "saved" before it, and a checkpoint written again later is listed."""
    from ray_interactive.core.messages import CheckpointSaved, CheckpointsRemoved
    from ray_interactive.core.reporting import Reporter

    sent: list[Progress] = []

    class Port:
        def progress(self, report: Progress) -> None:
            sent.append(report)

    reporter = Reporter(Port())  # type: ignore[arg-type]

    def report(step: int, event: Any = None) -> Progress:
        if event is not None:
            reporter._queue(event)
        reporter.progress("main", TrainerStatus(status="running", step=step, branch="main", time=float(step)), [])
        return sent[-1]

    info = CheckpointInfo(id="main@5", branch="main", step=5, created_at=1.0, reason="periodic")
    saved, removed = report(5, CheckpointSaved(info=info)), report(20, CheckpointsRemoved(ids=["main@5"]))
    assert (saved.seq, removed.seq) == (1, 2) and saved.reporter == removed.reporter
    c = harness.controller
    c.trainer_progress(removed)  # the later report first
    c.trainer_progress(saved)
    assert "main@5" not in {x["id"] for x in c.list_checkpoints()}
    assert c.trainer_status.step == 20  # the older status is not taken either
    # the same id written again later (a rewound branch) is news
    c.trainer_progress(report(25, CheckpointSaved(info=info)))
    assert "main@5" in {x["id"] for x in c.list_checkpoints()}
    # another reporter (a restarted loop, a second process) numbers its own reports
    other = Reporter(Port())  # type: ignore[arg-type]
    other._queue(CheckpointsRemoved(ids=["main@5"]))
    other.progress("main", TrainerStatus(status="running", step=30, branch="main", time=30.0), [])
    c.trainer_progress(sent[-1])
    assert "main@5" not in {x["id"] for x in c.list_checkpoints()}


def test_a_checkpoints_metrics_are_on_disk_with_the_report_that_announces_it(tmp_path: Path) -> None:
    """The report that says a checkpoint was written at the step it was written at (its row
    in the same report) puts the metrics up to it on disk at once: a group of workers that
    dies before its next report must not take them along (a run resumed from the checkpoint
    reads them back)."""
    from ray_interactive.core.messages import CheckpointSaved
    from ray_interactive.core.metrics import MetricStore

    c = Controller(make_config(tmp_path / "run").model_copy(update={"metrics_flush_s": 3600.0}))
    c.trainer_progress(progress("main", status_at(5), [(s, float(s), {"loss": 1.0 / s}) for s in range(1, 6)]))
    assert not list((c.run_dir / "metrics").glob("part-*.parquet"))  # the periodic flush is an hour away
    info = CheckpointInfo(id="main@10", branch="main", step=10, created_at=1.0, reason="periodic")
    c.trainer_progress(Progress(branch="main", status=status_at(10), rows=[(s, float(s), {"loss": 1.0 / s}) for s in
                                                                         range(6, 11)], events=[CheckpointSaved(info=info)]))
    stored = MetricStore.load(c.run_dir / "metrics").series["main"]["loss"]
    assert stored.steps[: stored.n].tolist() == list(range(1, 11))
    # the loop reports its rows just before it writes a checkpoint, its news right after
    assert not c.trainer_progress(progress("main", status_at(15), [(s, float(s), {"loss": 1.0 / s}) for s in range(11, 16)]))
    info = CheckpointInfo(id="main@15", branch="main", step=15, created_at=2.0, reason="periodic")
    assert c.trainer_progress(Progress(branch="main", status=status_at(15), rows=[], events=[CheckpointSaved(info=info)]))
    stored = MetricStore.load(c.run_dir / "metrics").series["main"]["loss"]
    assert stored.steps[: stored.n].tolist() == list(range(1, 16))
