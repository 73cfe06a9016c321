"""The client: how any process (UI, agent, demo, script, CLI) talks to a running run.

    import ray_interactive as ri
    run = ri.connect("my-run")
    rec = run.send("update_optimizer", params={"lr": 1e-4})
    print(rec.status, rec.message)            # accepted / rejected with the reason
    rec = run.wait(rec)                       # applied at step N (or failed)
    run.metrics(keys=["loss"], max_points=500)
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa
import ray

from ray_interactive.commands import CommandRecord, CommandStatus
from ray_interactive.config import DEFAULT_NAMESPACE, actor_name
from ray_interactive.launch import init_ray


class RunNotFound(LookupError):
    """No run with that name is running in the namespace."""


def list_runs(namespace: str = DEFAULT_NAMESPACE) -> list[str]:
    """Names of the runs whose controllers are alive in ``namespace``."""
    actors = ray.util.list_named_actors(all_namespaces=True)
    return sorted(
        a["name"].removesuffix(".controller")
        for a in actors
        if a["namespace"] == namespace and a["name"].endswith(".controller")
    )


def connect(run: str, address: str | None = None, namespace: str = DEFAULT_NAMESPACE) -> RunClient:
    """Attach to the run named ``run`` (connecting to Ray first if needed).

    ``address`` defaults to RAY_ADDRESS, else ``"auto"`` (a cluster started on this machine).
    """
    if not ray.is_initialized():
        init_ray(address, namespace=namespace, default="auto")
    try:
        controller = ray.get_actor(actor_name(run, "controller"), namespace=namespace)
    except ValueError:
        running = list_runs(namespace)
        hint = f"running: {', '.join(running)}" if running else "no run is running"
        raise RunNotFound(f"no run named {run!r} in namespace {namespace!r} ({hint})") from None
    return RunClient(run, namespace, controller)


class RunClient:
    """Commands, queries and data ingestion for one run."""

    def __init__(self, run: str, namespace: str, controller: Any) -> None:
        self.run = run
        self.namespace = namespace
        self._controller = controller
        self._buffer: Any = None

    # -- commands ----------------------------------------------------------------------
    def submit(self, command: Any, source: str | None = None) -> CommandRecord:
        """Submit a command (a model from :mod:`ray_interactive.commands`, a dict or JSON).

        Returns the record at once: ``accepted`` with its sequence number, or
        ``rejected`` with the reason. Invalid input never raises here.
        """
        return ray.get(self._controller.submit.remote(command, source))

    def send(self, kind: str, source: str | None = None, **fields: Any) -> CommandRecord:
        """``send("update_optimizer", params={"lr": 1e-4})``: build and submit a command."""
        return self.submit({"kind": kind, **fields}, source=source)

    def wait(self, command: CommandRecord | str, timeout: float = 60.0) -> CommandRecord:
        """Wait until a command is applied, failed or rejected; raises ``TimeoutError``."""
        cid = command if isinstance(command, str) else command.id
        if cid is None:
            raise ValueError("that record has no id (its payload was not a command)")
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            rec = ray.get(self._controller.wait_command.remote(cid, max(0.0, min(left, 30.0))))
            if rec is None:
                raise KeyError(f"no command with id {cid!r}")
            if rec.status is not CommandStatus.ACCEPTED:
                return rec
            if left <= 0:
                raise TimeoutError(f"command {cid} was not applied within {timeout:g}s (status: {rec.status.value})")

    def command(self, command_id: str) -> CommandRecord | None:
        return ray.get(self._controller.get_command.remote(command_id))

    def commands(self, limit: int | None = None, newest_first: bool = False) -> list[dict[str, Any]]:
        """The command log as flat dicts."""
        return ray.get(self._controller.commands.remote(limit, newest_first))

    def stop(self, wait: bool = True, timeout: float = 120.0) -> CommandRecord:
        """Ask the run to stop (final checkpoint); optionally wait until it has."""
        rec = self.send("stop")
        if wait and rec.status is CommandStatus.ACCEPTED:
            rec = self.wait(rec, timeout)
            deadline = time.monotonic() + timeout
            while self.status()["status"] not in ("stopped", "failed") and time.monotonic() < deadline:
                time.sleep(0.1)
        return rec

    # -- queries -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Run status: running / paused / stopping / stopped / failed, step, branch, ..."""
        return ray.get(self._controller.status.remote())

    def metrics(
        self,
        keys: list[str] | None = None,
        branch: str | None = None,
        since: int | None = None,
        max_points: int | None = None,
        include_ancestors: bool = False,
    ) -> dict[str, dict[str, list[Any]]]:
        """``{key: {"step": [...], "time": [...], "value": [...]}}`` of one branch."""
        return ray.get(
            self._controller.metrics.remote(
                branch=branch, keys=keys, since=since, max_points=max_points, include_ancestors=include_ancestors
            )
        )

    def metric_keys(self, branch: str | None = None) -> list[str]:
        return ray.get(self._controller.metric_keys.remote(branch))

    def checkpoints(self) -> list[dict[str, Any]]:
        return ray.get(self._controller.checkpoints.remote())

    def branches(self) -> dict[str, dict[str, Any]]:
        return ray.get(self._controller.branches.remote())

    def snapshot(self) -> dict[str, Any]:
        """The trainer's last self-description: param groups, modules, schedule, ..."""
        return ray.get(self._controller.snapshot.remote())

    # -- data --------------------------------------------------------------------------
    def _buffer_handle(self) -> Any:
        if self._buffer is None:
            self._buffer = ray.get_actor(actor_name(self.run, "buffer"), namespace=self.namespace)
        return self._buffer

    def ingest(self, table: pa.Table | pa.RecordBatch, source: str) -> dict[str, Any]:
        """Add rows to a source (passed by value: the buffer owns them). Raises
        ``ValueError`` with the reason if the table does not fit the source's schema."""
        try:
            return ray.get(self._buffer_handle().ingest.remote(table, source))
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(e.cause, ValueError) else None
            if cause is not None:
                raise ValueError(str(cause)) from None
            raise

    def sources(self) -> dict[str, Any]:
        return ray.get(self._buffer_handle().sources.remote())
