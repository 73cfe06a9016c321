"""A dashboard of a run with many branches (an agent that explores forks dozens): the
current branch's line and the newest others are drawn, every branch is in the table
(no Ray: the controller's answer handed to the UI's own code)."""

from __future__ import annotations

import math
import time
from pathlib import Path

from ray_interactive.core.checkpoints import CheckpointInfo
from ray_interactive.core.config import RunConfig, TaskSpec
from ray_interactive.core.controller import Controller
from ray_interactive.core.messages import BranchCreated, Progress, TrainerStatus
from ray_interactive.core.state import RunStatus
from ray_interactive.runtime.offline import FinishedRun
from ray_interactive.ui.dashboard import Dashboard, View


def _status(branch: str, step: int) -> TrainerStatus:
    return TrainerStatus(status=RunStatus.RUNNING, step=step, branch=branch, time=time.time())


def test_a_dashboard_of_many_branches_draws_the_current_line_and_the_newest(tmp_path: Path) -> None:
    c = Controller(RunConfig(name="many", task=TaskSpec(target="ray_interactive.examples.regression:RegressionTask"),
                             run_dir=tmp_path / "run"))
    c.trainer_progress(Progress(branch="main", status=_status("main", 10),
                                rows=[(s, 1.0, {"loss": 1.0 / s, "lr": 1e-3}) for s in range(1, 11)]))
    c.checkpoint_saved(CheckpointInfo(id="main@5", branch="main", step=5, created_at=1.0, reason="periodic"))
    for i in range(30):
        c.branch_created(BranchCreated(name=f"b{i}", parent="b3" if i == 20 else "main", checkpoint="main@5", step=5))
        c.trainer_progress(Progress(branch=f"b{i}", status=_status(f"b{i}", 20),
                                    rows=[(s, 1.0, {"loss": i + s / 100, "lr": 1e-4}) for s in range(6, 21)]))
    # the run is back on b20 (forked from b3, itself from main), whose last loss is NaN
    c.trainer_progress(Progress(branch="b20", status=_status("b20", 21), rows=[(21, 1.0, {"loss": math.nan})]))

    state = c.dashboard(["loss", "lr"], max_points=100, max_branches=5)
    assert set(state["metrics"]) == {"main", "b3", "b20", "b28", "b29"}  # its line, then the newest
    assert len(state["branches"]) == len(state["latest"]) == 31  # the table still lists every branch
    assert state["latest"]["b7"]["loss"] == (20, 7.2)
    assert state["latest"]["b20"]["loss"] == (20, 20.2)  # the NaN at its end is skipped
    assert len(c.dashboard(["loss"], max_branches=None)["metrics"]) == 31
    assert set(c.dashboard(["loss"], max_branches=2)["metrics"]) == {"main", "b3", "b20"}  # its line, whole
    picked = c.dashboard(["loss"], max_branches=5, branches=["b7", "nope", "b7"])["metrics"]
    assert set(picked) == {"main", "b3", "b20", "b7", "b29"}  # a picked one, then the newest

    dash = Dashboard(client=None)
    dash.state = state
    table = dash.branch_table(state).set_index("branch")
    assert len(table) == 31 and table.loc["b7", "loss"] == "7.2" and table.loc["b7", "last step"] == 20
    loss = dash.figures(state, View())["loss"]
    assert "5 of 31 branches" in loss["layout"]["title"]["subtitle"]["text"]
    drawn = {t["name"] for t in loss["data"] if t.get("showlegend") is not False}
    assert drawn == {"main", "b3", "b20", "b28", "b29"}

    # the UI's pick ("also draw") reaches a finished run's directory the same way
    c.close()
    offline = Dashboard(client=FinishedRun(tmp_path / "run"))
    assert "b7" in offline.fetch(View(branches=("b7",)))["metrics"]
    assert "b7" not in offline.fetch(View())["metrics"]
