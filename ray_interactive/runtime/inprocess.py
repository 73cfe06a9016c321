"""A run whose training loop is in this process (Hugging Face ``Trainer``, a plain loop).

The controller is the usual named actor (on the embedded local Ray, or the cluster at
``RAY_ADDRESS``), so the run shows in ``runs``, the control UI, the CLI and the Python
client like any other. The loop reaches it exactly as the Trainer actor does: a puller
thread long-polls it for commands (:func:`~ray_interactive.runtime.ports.puller`), reports
and weights leave through :mod:`~ray_interactive.runtime.ports`. :class:`InProcessRun` is
the :class:`~ray_interactive.core.link.RunLink` the front-ends are given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray

from ray_interactive.core.config import RunConfig, actor_name
from ray_interactive.core.link import CommandPuller
from ray_interactive.core.steering import Steering
from ray_interactive.runtime import ports
from ray_interactive.runtime.connection import init_ray
from ray_interactive.runtime.controller_actor import ControllerActor
from ray_interactive.runtime.launch import check_new_run, submit_replay, wait_for_snapshot

log = logging.getLogger(__name__)


class InProcessRun:
    """The controller of a run steered in this process, and the thread that feeds it commands."""

    def __init__(self, config: RunConfig, address: str | None = None, resume: bool = False,
                 resume_from: str | None = None) -> None:
        init_ray(address, namespace=config.namespace)
        found = check_new_run(config, resume, resume_from)
        self.resume_from = Path(found) if found else None
        self.config = config
        cfg = config.model_dump(mode="json")
        cfg["run_dir"] = str(config.resolved_run_dir)
        self.controller = ControllerActor.options(
            name=actor_name(config.name, "controller"), namespace=config.namespace
        ).remote(cfg, recover=resume)
        # The first command this loop gets: a client may submit as soon as the controller exists.
        self.next_seq: int = ray.get(self.controller.attach.remote(None, None))
        self.reporter = ports.reporter(self.controller)
        self.publisher = ports.publisher(self.controller)
        self.next_weight_version: int = ray.get(self.controller.next_weight_version.remote())
        self._puller: CommandPuller | None = None

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
        self._puller = ports.puller(self.controller, core, self.next_seq - 1, self.config.name)
        self._puller.fetch_once(timeout=0.0)
        self._puller.start()

    def close(self, keep_controller: bool = False) -> None:
        """Stop fetching, flush the controller's log and metrics, and end its actor."""
        if self._puller is not None:
            self._puller.stop()
        try:
            ray.get(self.controller.close.remote(), timeout=30)
        except Exception:
            log.warning("controller did not close cleanly")
        if not keep_controller:
            try:
                ray.kill(self.controller)
            except Exception:
                pass
