"""Finished runs, opened from their run directory as TensorBoard opens a logdir.

A run that has ended has no actors left, but its directory holds everything durable:
config, command log, metrics, branches, checkpoints, weight versions and the last status.
:class:`FinishedRun` reads them (through the controller's own recovery, in a mode that
writes nothing) and answers the read-only part of :class:`~ray_interactive.runtime.client.RunClient`,
so the CLI's ``status``/``log``/``checkpoints``/``weights`` and the control UI work on it.
Commands are refused with a message that says how to continue the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray_interactive.core.commands import CommandRecord, CommandStatus, loggable, parse_command
from ray_interactive.core.config import RunConfig
from ray_interactive.core.controller import Controller
from ray_interactive.core.paths import find_run_dir
from ray_interactive.core.resume import how_to_resume


def attach(run: str, address: str | None = None, namespace: str | None = None) -> Any:
    """The run named ``run`` if it is running (a :class:`~ray_interactive.runtime.client.RunClient`),
    else its run directory (``run`` as a path, or ``runs/<run>``) as a :class:`FinishedRun`;
    ``LookupError`` saying what was tried if neither."""
    from ray_interactive.core.config import DEFAULT_NAMESPACE
    from ray_interactive.runtime.client import RunNotFound, connect

    if "/" in run or run.startswith("."):  # a path, never a run's name: no cluster to ask
        run_dir = find_run_dir(run)
        if run_dir is None:
            raise LookupError(f"{run} is not a run directory (no config.json)")
        return FinishedRun(run_dir)
    try:
        return connect(run, address=address, namespace=namespace or DEFAULT_NAMESPACE)
    except (RunNotFound, ConnectionError) as e:
        run_dir = find_run_dir(run)
        if run_dir is None:
            raise LookupError(f"{e} (and no run directory {run!r} or runs/{run} to read)") from None
        return FinishedRun(run_dir)


class FinishedRun:
    """A read-only client of a run directory (see the module docstring)."""

    read_only = True

    def __init__(self, run_dir: str | Path) -> None:
        run_dir = Path(run_dir).resolve()
        if not (run_dir / "config.json").is_file():
            raise ValueError(f"{run_dir} is not a run directory (no config.json)")
        doc = json.loads((run_dir / "config.json").read_text())
        doc["run_dir"] = str(run_dir)  # where it is now, if it was moved or copied
        self.config = RunConfig.model_validate(doc, context={"stored": True})  # trackers need not be installed here
        self.run = self.config.name
        self.namespace = self.config.namespace
        self.run_dir = run_dir
        self._c = Controller(self.config, recover=True, read_only=True)

    # -- what ended ----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The run's last saved status; a run whose process vanished before it could say
        "stopped" is reported as ``ended``."""
        live = self._c.status()
        saved: dict[str, Any] = {}
        try:
            saved = json.loads((self.run_dir / "status.json").read_text())
        except (OSError, ValueError):
            pass
        state = saved.get("status")
        last_step = max((self._c.metrics.last_step(b) for b in self._c.branches), default=0)
        out = {**live, **{k: v for k, v in saved.items() if k not in ("commands", "checkpoints", "branches")}}
        out["finished"] = True
        if state not in ("stopped", "failed"):
            out["status"] = "ended"
            out["message"] = (
                f"the run's processes are gone (last seen {state or 'unknown'} at step {saved.get('step', last_step)}); "
                f"it did not stop cleanly; {self.how_to_continue()}"
            )
        out.setdefault("step", last_step)
        out.setdefault("branch", "main")
        out["samples_per_s"] = 0.0  # it trains nothing now (status.json may hold the last running rate)
        out.setdefault("last_checkpoint", None)
        return out

    def how_to_continue(self) -> str:
        return how_to_resume(self.config)

    # -- the read-only part of RunClient -------------------------------------------------
    def metrics(self, keys: list[str] | None = None, branch: str | None = None, since: int | None = None,
                max_points: int | None = None, include_ancestors: bool = False, until: int | None = None) -> dict[str, Any]:
        branch = branch or self.status().get("branch")
        return self._c.get_metrics(branch, keys, since, max_points, include_ancestors, until)

    def metric_keys(self, branch: str | None = None) -> list[str]:
        return self._c.metric_keys(branch or self.status().get("branch"))

    def commands(self, limit: int | None = None, newest_first: bool = False) -> list[dict[str, Any]]:
        return self._c.commands(limit, newest_first)

    def command(self, command_id: str) -> CommandRecord | None:
        return self._c.get_command(command_id)

    def checkpoints(self) -> list[dict[str, Any]]:
        return self._c.list_checkpoints()

    def checkpoint_page(self, offset: int = 0, limit: int = 50, branch: str | None = None) -> dict[str, Any]:
        return self._c.checkpoint_page(offset, limit, branch)

    def branches(self) -> dict[str, dict[str, Any]]:
        return self._c.list_branches()

    def snapshot(self) -> dict[str, Any]:
        return {}

    def data_status(self) -> dict[str, Any]:
        return {}

    def sources(self) -> dict[str, Any]:
        return {}

    def rollout(self) -> dict[str, Any]:
        """The guarded rollout as the run left it: stable, rejected, every decision."""
        return self._c.rollout()

    def weight_versions(self) -> list[dict[str, Any]]:
        out = []
        path = self.run_dir / "weights.jsonl"
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def dashboard(self, keys: list[str], since: int | None = None, until: int | None = None,
                  max_points: int | None = None, history: int = 50, max_branches: int | None = 12,
                  branches: list[str] | None = None) -> dict[str, Any]:
        return {**self._c.dashboard(keys, since, until, max_points, history, max_branches, branches=branches),
                "status": self.status()}

    # -- commands: refused ---------------------------------------------------------------
    def submit(self, command: Any, source: str | None = None) -> CommandRecord:
        """Never sent: a finished run takes no commands (the record says what to do)."""
        message = f"run {self.run!r} has ended; this is a read-only view of {self.run_dir}: {self.how_to_continue()}"
        try:
            return CommandRecord(command=parse_command(command), status=CommandStatus.REJECTED, message=message)
        except ValueError:
            return CommandRecord(command=None, payload=loggable(command), status=CommandStatus.REJECTED, message=message)

    def send(self, kind: str, source: str | None = None, **fields: Any) -> CommandRecord:
        return self.submit({"kind": kind, **fields}, source=source)

    def wait(self, command: Any, timeout: float = 60.0) -> CommandRecord:
        raise TimeoutError(f"run {self.run!r} has ended; nothing will be applied")

    def __repr__(self) -> str:
        return f"FinishedRun({str(self.run_dir)!r})"
