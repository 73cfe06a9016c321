"""A run's experiment trackers (``report_to``): the plain controller feeding real
TensorBoard event files, a real MLflow store and real W&B offline runs, read back with each
library's own reader - branches as runs of their own, commands as text, no step twice
after a rewind - and the feed never holding up the controller (no Ray)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ray_interactive.core.commands import CommandRecord, CommandStatus, UpdateOptimizer
from ray_interactive.core.config import RunConfig
from ray_interactive.core.controller import Controller
from ray_interactive.core.messages import BranchCreated, BranchRewound, Progress, TrainerStatus
from ray_interactive.core.trackers import TRACKERS, Rows, RunInfo, Sink, TrackerFeed, check_report_to
from ray_interactive.core.trackers.registry import TrackerSpec

from .conftest import snapshot_of, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def status_at(step: int, branch: str = "main") -> TrainerStatus:
    return TrainerStatus(status="running", step=step, branch=branch, time=time.time())


def rows(steps: range, offset: float = 0.0) -> list[tuple[int, float, dict[str, float]]]:
    return [(s, time.time(), {"loss": 1.0 / s + offset, "lr": 1e-3}) for s in steps]


def steered_run(run_dir: Path, report_to: list[str], **config: Any) -> Controller:
    """A controller told what a loop does: main 1-20, a command at 10, branch b forked from
    main@10 running 11-25, then the trainer restarted from b@20 (a rewind) and running 21-30."""
    import torch

    c = Controller(RunConfig(name="tracked", run_dir=run_dir, report_to=report_to, metrics_flush_s=0.2, **config))
    model = torch.nn.Linear(2, 1)
    c.trainer_snapshot(snapshot_of(model, torch.optim.SGD(model.parameters(), lr=1e-3)))
    c.trainer_progress(Progress(branch="main", status=status_at(10), rows=rows(range(1, 11))))
    cmd = c.submit(UpdateOptimizer(params={"lr": 5e-4}, comment="loss oscillates"))
    done = cmd.model_copy(update={"status": CommandStatus.APPLIED, "applied_step": 10, "applied_at": time.time(),
                                  "branch": "main", "message": "lr 0.001 -> 0.0005"})
    c._store_outcome(done)
    c.trainer_progress(Progress(branch="main", status=status_at(20), rows=rows(range(11, 21))))
    fork = BranchCreated(name="b", parent="main", checkpoint="main@10", step=10)
    c.trainer_progress(Progress(branch="b", status=status_at(25, "b"), rows=rows(range(11, 26), 0.5), events=[fork]))
    rewind = BranchRewound(branch="b", step=21)
    c.trainer_progress(Progress(branch="b", status=status_at(30, "b"), rows=rows(range(21, 31), 0.25),
                                events=[rewind]))
    c.close()
    return c


# -- report_to --------------------------------------------------------------------------
def test_report_to_takes_a_list_or_one_name_and_refuses_unknown_ones() -> None:
    assert check_report_to("tensorboard, mlflow") == ["tensorboard", "mlflow"]
    assert check_report_to(["mlflow", "MLflow"]) == ["mlflow"]
    assert check_report_to("none") == [] and check_report_to(None) == []
    assert RunConfig(name="r", report_to="tensorboard").report_to == ["tensorboard"]
    with pytest.raises(ValueError, match="unknown tracker 'comet'; known: tensorboard, mlflow, wandb"):
        RunConfig(name="r", report_to=["comet"])


def test_report_to_a_tracker_not_installed_names_the_pip_extra(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setitem(TRACKERS, "wandb", TrackerSpec("no_such_module_here", "wandb", TRACKERS["wandb"].sink))
    with pytest.raises(ValueError, match=r"needs the wandb package, which is not installed: pip install "
                                         r"'ray-interactive\[trackers\]'"):
        RunConfig(name="r", report_to="wandb")
    # A stored config (a finished run opened on a machine without the library) still reads.
    RunConfig.model_construct(name="r", report_to=["wandb"]).save(tmp_path / "config.json")
    assert RunConfig.load(tmp_path / "config.json").report_to == ["wandb"]


# -- TensorBoard ------------------------------------------------------------------------
def tb_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def tb_texts(log_dir: Path, tag: str) -> list[tuple[int, str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode())
            for e in acc.Tensors(f"{tag}/text_summary")]


def test_tensorboard_shows_each_branch_as_a_run_and_a_rewind_never_repeats_a_step(tmp_path: Path) -> None:
    steered_run(tmp_path / "run", ["tensorboard"])
    tb = tmp_path / "run" / "tensorboard"
    assert sorted(p.name for p in tb.iterdir()) == ["b", "main"]
    main = tb_scalars(tb / "main", "loss")
    assert [s for s, _ in main] == list(range(1, 21)) and main[0][1] == pytest.approx(1.0)
    b = tb_scalars(tb / "b", "loss")
    # b continues main from step 10; the trainer restarted from step 20 computed 21-30 again: once each.
    assert [s for s, _ in b] == list(range(11, 31))
    assert dict(b)[25] == pytest.approx(1 / 25 + 0.25)  # the values of the recomputation
    (step, text), = tb_texts(tb / "main", "commands")
    assert step == 10 and text.startswith('#1 update_optimizer (api) {"params": {"lr": 0.0005}} -> applied at step 10')
    assert text.endswith(": lr 0.001 -> 0.0005 // loss oscillates")
    assert tb_texts(tb / "b", "branch") == [(10, "branch b continues main from step 10 (checkpoint main@10)")]


# -- MLflow -----------------------------------------------------------------------------
def test_mlflow_holds_a_nested_run_per_branch_forked_at_its_step(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    steered_run(tmp_path / "run", ["mlflow"])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tracked")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"tracked", "main", "b", "b (from step 21)"}
    parent = runs["tracked"].info.run_id
    assert all(r.data.tags["mlflow.parentRunId"] == parent for n, r in runs.items() if n != "tracked")
    assert all(r.info.status == "FINISHED" for n, r in runs.items() if n != "b")
    b, again = runs["b"].data.tags, runs["b (from step 21)"].data.tags
    assert (b["branch"], b["parent_branch"], b["fork_step"], b["checkpoint"]) == ("b", "main", "10", "main@10")
    assert (again["branch"], again["parent_branch"], again["fork_step"]) == ("b", "b", "20")
    assert again["rewound_from"] == runs["b"].info.run_id and runs["b"].info.status == "KILLED"

    def steps(run: Any) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))

    assert steps(runs["main"]) == list(range(1, 21))
    assert steps(runs["b"]) == list(range(11, 26)) and steps(runs["b (from step 21)"]) == list(range(21, 31))
    main_id = runs["main"].info.run_id
    (artifact,) = client.list_artifacts(main_id, "commands")
    assert artifact.path == "commands/00000010-0001-update_optimizer.txt"
    text = Path(client.download_artifacts(main_id, artifact.path, str(tmp_path))).read_text()
    assert text.startswith("#1 update_optimizer") and "loss oscillates" in text
    assert runs["main"].data.tags["last_command"] == text


def test_a_resumed_run_logs_into_the_same_mlflow_runs(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    cfg = RunConfig(name="again", run_dir=run_dir, report_to=["mlflow"], metrics_flush_s=0.2)
    c = Controller(cfg)
    c.trainer_progress(Progress(branch="main", status=status_at(5), rows=rows(range(1, 6))))
    c.close()
    c = Controller(cfg, recover=True)  # resumed from main@5: nothing past it was logged, so no new run
    c.trainer_progress(Progress(branch="main", status=status_at(8), rows=rows(range(6, 9)),
                                events=[BranchRewound(branch="main", step=6)]))
    c.close()
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("again")
    (main,) = client.search_runs([exp.experiment_id], filter_string="tags.branch = 'main'")
    assert sorted(m.step for m in client.get_metric_history(main.info.run_id, "loss")) == list(range(1, 9))


# -- W&B (offline) ----------------------------------------------------------------------
def test_wandb_offline_writes_a_run_per_branch_in_one_group(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    steered_run(tmp_path / "run", ["wandb"])
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 3  # main, b, and b computed again from step 21
    # wandb's service process may still be writing a run's file when finish() returns
    def written() -> list[bytes] | None:
        data = [p.read_bytes() for p in runs]
        return data if all(b"tracked" in d for d in data) else None  # the group

    data = wait_until(written, timeout=60, what="every run's file to name the group")
    assert sum(b"b (from step 21)" in d for d in data) == 1
    (table,) = (tmp_path / "run" / "wandb").glob("offline-run-*/files/media/table/commands_*.table.json")
    (row,) = json.loads(table.read_text())["data"]
    assert row[0] == 10 and row[1].startswith("#1 update_optimizer") and row[1].endswith("// loss oscillates")
    ids = json.loads((tmp_path / "run" / "trackers" / "wandb.json").read_text())["ids"]
    assert set(ids) == {"main", "b"} and all(any(i in p.name for p in runs) for i in ids.values())


# -- the feed ---------------------------------------------------------------------------
class GatedSink(Sink):
    """A tracker that takes as long as the test says (a slow server)."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.got: list[Any] = []
        self.closed = False

    def metrics(self, event: Rows) -> None:
        self.gate.wait(30)
        self.got.append(event)

    def close(self) -> None:
        self.closed = True


def wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_slow_tracker_never_holds_up_the_controller_and_a_full_queue_drops_with_a_count(tmp_path: Path) -> None:
    sink = GatedSink()
    feed = TrackerFeed(["gated"], RunInfo("r", tmp_path, resumed=False), max_queue=5, opener=lambda n, i: sink)
    t0 = time.perf_counter()
    results = [feed.put(Rows("main", [(i, 0.0, {"x": 1.0})])) for i in range(50)]
    assert time.perf_counter() - t0 < 1.0  # the sink is stuck on the first event: put() does not wait
    assert results.count(False) == feed.dropped >= 44
    (error,) = feed.take_errors()
    assert "events are dropped" in error and feed.take_errors() == []
    sink.gate.set()
    feed.close()
    steps = [row[0] for event in sink.got for row in event.rows]  # reports queued together come in one write
    assert sink.closed and len(steps) == 50 - feed.dropped == feed.written and steps == sorted(steps)


def test_a_tracker_that_fails_is_reported_in_the_run_history_and_the_run_goes_on(tmp_path: Path) -> None:
    c = Controller(RunConfig(name="bad", run_dir=tmp_path / "run", report_to=["mlflow"],
                             mlflow_tracking_uri="nosuchscheme://x", metrics_flush_s=0.2))
    c.trainer_progress(Progress(branch="main", status=status_at(3), rows=rows(range(1, 4))))
    assert c.trackers is not None
    feed = c.trackers
    wait_for(lambda: feed.written >= 1)
    c.close()
    events = [r for r in c.records.values() if isinstance(r, CommandRecord) and r.event == "system"]
    assert any("the mlflow tracker could not be opened" in (r.message or "") for r in events)
    assert c.get_metrics("main", ["loss"])["loss"]["step"] == [1, 2, 3]
