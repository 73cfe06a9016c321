"""A run whose training loop is in this process (Hugging Face ``Trainer``, a plain loop).

The controller is the usual named actor (on the embedded local Ray, or the cluster at
``RAY_ADDRESS``), so the run shows in ``runs``, the control UI, the CLI and the Python
client like any other. Only the delivery of commands differs: an actor can call our
Trainer actor, but not a driver, so a thread here long-polls the controller
(``pull_commands``), which answers the moment a command is accepted; the loop applies it
at its next control point. Events, metrics and weights leave exactly as from the Trainer
actor (:class:`~ray_interactive.core.steering.Reporter`, the background weight publisher).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import ray

from ray_interactive.core.commands import CommandRecord
from ray_interactive.core.config import RunConfig, actor_name
from ray_interactive.core.steering import Reporter, Steering
from ray_interactive.runtime.actors import ControllerActor
from ray_interactive.runtime.connection import init_ray
from ray_interactive.runtime.launch import check_new_run, submit_replay, wait_for_snapshot
from ray_interactive.serve.weights import BackgroundPublisher

log = logging.getLogger(__name__)


class InProcessRun:
    """The controller of a run steered in this process, and the thread that feeds it commands."""

    def __init__(self, config: RunConfig, address: str | None = None, resume: bool = False) -> None:
        init_ray(address, namespace=config.namespace)
        check_new_run(config, resume)
        self.config = config
        cfg = config.model_dump(mode="json")
        cfg["run_dir"] = str(config.resolved_run_dir)
        self.controller = ControllerActor.options(
            name=actor_name(config.name, "controller"), namespace=config.namespace
        ).remote(cfg, recover=resume)
        # The first command this loop gets: a client may submit as soon as the controller exists.
        self.next_seq: int = ray.get(self.controller.attach.remote(None, None, pull=True))
        controller = self.controller
        self.reporter = Reporter(lambda method, *args: getattr(controller, method).remote(*args), ray.get)
        self.publisher = BackgroundPublisher(
            put=ray.put, report=lambda meta, ref: controller.weights_published.remote(meta, [ref]), wait=ray.get
        )
        self.next_weight_version: int = ray.get(controller.next_weight_version.remote())
        self._core: Steering | None = None
        self._after = self.next_seq - 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def client(self) -> Any:
        from ray_interactive.runtime.client import RunClient

        return RunClient(self.config.name, self.config.namespace, self.controller)

    def replay(self, source_dir: str | Path) -> int:
        """Queue ``source_dir``'s applied commands, each pinned to the step where it took
        effect (call after the core has described itself, before :meth:`connect`);
        returns how many were accepted."""
        source = Path(source_dir)
        if not (source / "commands.jsonl").exists():
            raise ValueError(f"{source} is not a run directory (no commands.jsonl)")
        wait_for_snapshot(self.controller)  # commands are checked against the run's description
        return submit_replay(self.client(), source)

    def connect(self, core: Steering) -> None:
        """Hand the core every command accepted so far, then keep feeding it from a thread."""
        self._core = core
        self._fetch(timeout=0.0)
        self._thread = threading.Thread(target=self._loop, name=f"{self.config.name}-commands", daemon=True)
        self._thread.start()

    def _fetch(self, timeout: float) -> None:
        assert self._core is not None
        records: list[CommandRecord] = ray.get(self.controller.pull_commands.remote(self._after, timeout))
        if records:
            self._core.deliver(records)
            self._after = max(self._after, *(r.seq or 0 for r in records))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._fetch(timeout=2.0)
            except Exception:
                if self._stop.is_set():
                    return
                log.warning("fetching commands failed; retrying", exc_info=True)
                self._stop.wait(0.5)

    def close(self, keep_controller: bool = False) -> None:
        """Stop fetching, flush the controller's log and metrics, and end its actor."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            ray.get(self.controller.close.remote(), timeout=30)
        except Exception:
            log.warning("controller did not close cleanly")
        if not keep_controller:
            try:
                ray.kill(self.controller)
            except Exception:
                pass
