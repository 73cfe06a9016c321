"""MLflow: an experiment named after the run, a parent run for the run and a nested run
per branch (tags ``branch``, ``parent_branch``, ``fork_step``, ``checkpoint``).

A rewind starts a new nested run for the branch (tag ``branch`` the same, ``rewound_from``
the run it replaces): MLflow keeps every value it is sent, so re-logging steps in the same
run would show them twice. Commands are text artifacts (``commands/<seq>-<kind>.txt``) of
the branch's run and a ``last_command`` tag. The run ids are kept in
``<run_dir>/trackers/mlflow.json``, so a resumed run or a restarted controller logs into
the same runs. Default store: ``sqlite:///<run_dir>/mlflow.db`` (MLflow's file store is
deprecated), artifacts in ``<run_dir>/mlartifacts``; ``mlflow ui --backend-store-uri`` it.
"""

from __future__ import annotations

import re
import time
from typing import Any

from ray_interactive.core.trackers.base import Fork, Note, Rewind, Rows, RunInfo, Sink, load_state, save_state

#: MLflow takes at most 1000 metrics per log_batch call.
BATCH = 1000
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")


def default_uri(info: RunInfo) -> str:
    """Where a run's MLflow data goes unless ``mlflow_tracking_uri`` says otherwise."""
    return f"sqlite:///{info.run_dir / 'mlflow.db'}"


class MlflowSink(Sink):
    """Logs through ``mlflow.tracking.MlflowClient`` (no global active run: thread-safe)."""

    name = "mlflow"

    def __init__(self, info: RunInfo) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        self.uri = info.mlflow_tracking_uri or default_uri(info)
        self.client = MlflowClient(tracking_uri=self.uri)
        self._state_path = info.run_dir / "trackers" / "mlflow.json"
        state = load_state(self._state_path) if info.resumed else {}
        if state.get("uri") != self.uri:
            state = {}
        exp = self.client.get_experiment_by_name(info.run)
        if exp is not None:
            self.experiment_id = exp.experiment_id
        else:
            location = (info.run_dir / "mlartifacts").as_uri() if info.mlflow_tracking_uri is None else None
            self.experiment_id = self.client.create_experiment(info.run, artifact_location=location)
        self.parent: str = state.get("parent") or self.client.create_run(
            self.experiment_id, run_name=info.run, tags={"ray_interactive.run": info.run}).info.run_id
        self.runs: dict[str, str] = dict(state.get("runs", {}))  # branch -> the run its metrics go to now
        self.last: dict[str, int] = dict(state.get("last", {}))  # branch -> the highest step logged to that run
        for run_id in [self.parent, *self.runs.values()]:
            if state:  # taken up again: running once more
                self.client.update_run(run_id, status="RUNNING")
        self._save()

    def _save(self) -> None:
        save_state(self._state_path, {"uri": self.uri, "parent": self.parent, "runs": self.runs, "last": self.last})

    def _new_run(self, branch: str, run_name: str, tags: dict[str, str]) -> str:
        run_id: str = self.client.create_run(self.experiment_id, run_name=run_name, tags={
            "mlflow.parentRunId": self.parent, "branch": branch, **tags}).info.run_id
        self.runs[branch] = run_id
        self.last[branch] = -1  # nothing logged to it yet
        self._save()
        return run_id

    def _run(self, branch: str) -> str:
        """The branch's run; the first branch seen that nobody forked is a root (``main``)."""
        return self.runs.get(branch) or self._new_run(branch, branch, {})

    def metrics(self, event: Rows) -> None:
        run_id = self._run(event.branch)
        batch: list[Any] = []
        for step, t, values in event.rows:
            ms = int(t * 1000)
            batch.extend(self._metric(_key(k), float(v), ms, int(step)) for k, v in values.items())
        for i in range(0, len(batch), BATCH):
            self.client.log_batch(run_id, metrics=batch[i : i + BATCH], synchronous=True)
        if event.rows:
            self.last[event.branch] = max(self.last.get(event.branch, -1), *(int(r[0]) for r in event.rows))

    def note(self, event: Note) -> None:
        run_id = self._run(event.branch)
        self.client.log_text(run_id, event.text, f"commands/{event.step:08d}-{event.name}.txt")
        self.client.set_tag(run_id, "last_command", event.text[:5000])

    def fork(self, event: Fork) -> None:
        self._new_run(event.name, event.name, {
            "parent_branch": event.parent, "fork_step": str(event.step), "checkpoint": event.checkpoint})

    def rewind(self, event: Rewind) -> None:
        old = self.runs.get(event.branch)
        if old is None or self.last.get(event.branch, event.step) < event.step:  # unknown: assume it was
            return  # nothing logged at or past the step: nothing to hide
        self.client.set_terminated(old, "KILLED", end_time=int(time.time() * 1000))
        self._new_run(event.branch, f"{event.branch} (from step {event.step})", {
            "parent_branch": event.branch, "fork_step": str(event.step - 1), "rewound_from": old})

    def flush(self) -> None:
        self._save()  # the highest steps, so a resumed run knows whether it repeats any

    def close(self) -> None:
        self._save()
        for run_id in [*self.runs.values(), self.parent]:
            self.client.set_terminated(run_id, "FINISHED")


def _key(key: str) -> str:
    """A metric name MLflow accepts (letters, digits, ``_-. :/``)."""
    return _KEY_UNSAFE.sub("_", key)[:250] or "_"
