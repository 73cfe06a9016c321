"""Weights & Biases: a W&B run per branch, all in one group named after the run (project
``ray_interactive`` unless ``WANDB_PROJECT`` says otherwise), the branch in the run's name,
tags and config (``branch``, ``parent_branch``, ``fork_step``).

Each run's x axis is the training step (``define_metric``), so W&B's own step counter never
has to go back; a rewind starts a new run for the branch, as on MLflow. Commands are rows of
a ``commands`` table (step, text). W&B's mode is its own (``WANDB_MODE``: ``offline`` writes
under ``<run_dir>/wandb`` for ``wandb sync`` later).
"""

from __future__ import annotations

import os
from typing import Any

from ray_interactive.core.trackers.base import Fork, Note, Rewind, Rows, RunInfo, Sink, load_state, save_state

STEP = "trainer/step"


class WandbSink(Sink):
    """One ``wandb`` run per branch (``reinit="create_new"``: several live in one process)."""

    name = "wandb"

    def __init__(self, info: RunInfo) -> None:
        import wandb

        self.wandb = wandb
        self.info = info
        self.dir = info.run_dir
        self._state_path = info.run_dir / "trackers" / "wandb.json"
        state = load_state(self._state_path) if info.resumed else {}
        self.ids: dict[str, str] = dict(state.get("ids", {}))  # branch -> the W&B run id its metrics go to now
        self.last: dict[str, int] = dict(state.get("last", {}))
        self._runs: dict[str, Any] = {}
        self._notes: dict[str, list[list[Any]]] = {}

    def _save(self) -> None:
        save_state(self._state_path, {"ids": self.ids, "last": self.last})

    def _start(self, branch: str, name: str, config: dict[str, Any], run_id: str | None = None) -> Any:
        run = self.wandb.init(
            project=os.environ.get("WANDB_PROJECT", "ray_interactive"), group=self.info.run, name=name,
            id=run_id, resume="allow" if run_id else None, dir=str(self.dir), reinit="create_new",
            config={"branch": branch, "run": self.info.run, **config}, tags=[branch],
            settings=self.wandb.Settings(silent=True, x_disable_stats=True),
        )
        run.define_metric(STEP)
        run.define_metric("*", step_metric=STEP)
        self._runs[branch] = run
        self.ids[branch] = run.id
        if run_id is None:
            self.last[branch] = -1
        self._save()
        return run

    def _run(self, branch: str) -> Any:
        run = self._runs.get(branch)
        if run is None:
            run = self._start(branch, branch, {}, self.ids.get(branch))
        return run

    def metrics(self, event: Rows) -> None:
        run = self._run(event.branch)
        for step, _t, values in event.rows:
            run.log({**values, STEP: step})
        if event.rows:
            self.last[event.branch] = max(self.last.get(event.branch, -1), *(int(r[0]) for r in event.rows))

    def note(self, event: Note) -> None:
        run = self._run(event.branch)
        rows = self._notes.setdefault(event.branch, [])
        rows.append([event.step, event.text])
        run.log({"commands": self.wandb.Table(columns=["step", "command"], data=list(rows)), STEP: event.step})

    def fork(self, event: Fork) -> None:
        self._finish(event.name)
        self._start(event.name, event.name, {"parent_branch": event.parent, "fork_step": event.step,
                                             "checkpoint": event.checkpoint})

    def rewind(self, event: Rewind) -> None:
        if event.branch not in self.ids or self.last.get(event.branch, event.step) < event.step:
            return  # nothing logged at or past the step
        self._finish(event.branch)
        self._notes.pop(event.branch, None)
        self._start(event.branch, f"{event.branch} (from step {event.step})",
                    {"parent_branch": event.branch, "fork_step": event.step - 1})

    def _finish(self, branch: str) -> None:
        run = self._runs.pop(branch, None)
        if run is not None:
            run.finish()

    def flush(self) -> None:
        self._save()

    def close(self) -> None:
        self._save()
        for branch in list(self._runs):
            self._finish(branch)
