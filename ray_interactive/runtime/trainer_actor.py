"""The trainer actor: a Ray shell around :class:`~ray_interactive.train.trainer.Trainer`.

Threaded, with two concurrency groups: ``loop`` runs the step loop, ``control`` answers
the controller (ready, recover) while the loop runs (FIELD-NOTES: ~2 ms answers). The loop
pulls its commands like every other loop (:func:`~ray_interactive.runtime.ports.puller`).
With ``workers > 1`` it runs the ranks under Ray Train instead
(:mod:`~ray_interactive.runtime.workers`) and recovers them when one is lost.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import ray

from ray_interactive.core.config import RunConfig, actor_name
from ray_interactive.core.link import CommandPuller
from ray_interactive.core.recovery import RestartPlan
from ray_interactive.core.task import load_task
from ray_interactive.runtime import ports
from ray_interactive.runtime.feeds import RayFeed
from ray_interactive.runtime.lifecycle import death_reason, paused_at
from ray_interactive.train.trainer import Trainer

log = logging.getLogger(__name__)


@ray.remote(concurrency_groups={"loop": 1, "control": 2})
class TrainerActor:
    """Ray shell of :class:`~ray_interactive.train.trainer.Trainer`.

    Started with ``max_restarts``: when its process dies Ray starts a new one, which waits
    for the controller to :meth:`recover` it from a checkpoint before its loop runs."""

    def __init__(self, config: dict[str, Any], resume_from: str | None = None) -> None:
        logging.basicConfig(level=logging.INFO)
        self._cfg = cfg = RunConfig.model_validate(config)
        # Found by name, not passed in: a restartable actor's arguments must not hold handles
        # (Ray keeps those in the object store, where a restart may not find them).
        self._controller = ray.get_actor(actor_name(cfg.name, "controller"), namespace=cfg.namespace)
        self._buffer = ray.get_actor(actor_name(cfg.name, "buffer"), namespace=cfg.namespace)
        self._result: tuple[bool, Any] | None = None  # how the loop ended: (ok, status or error)
        self._loop_started = False  # run() has begun (a watchdog tells slow from stuck by it)
        self._t: Trainer | None = None
        self._puller: CommandPuller | None = None
        self._incarnation = 0  # which start of the trainer this is (a recovery says)
        # Many workers: this actor runs them under Ray Train (runtime/workers.py) and
        # recovers them when one is lost; these say where the next start begins.
        self._start: dict[str, Any] | None = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if restarted:  # built by recover(), from the checkpoint the controller names
            return
        next_seq = ray.get(self._controller.first_command.remote())
        if self._cfg.workers > 1:
            self._start = {"next_seq": next_seq, "resume_from": resume_from, "records": [], "paused": None,
                           "incarnation": 0}
        else:
            self._build(next_seq, resume_from, None)

    def _build(self, next_seq: int, resume_from: str | None, start_position: dict[str, Any] | None) -> Trainer:
        cfg, controller, buffer = self._cfg, self._controller, self._buffer
        task = load_task(cfg.task.target, cfg.task.kwargs)  # type: ignore[union-attr]

        def feed_factory(position: dict[str, Any] | None) -> RayFeed:
            if position is None:
                position = start_position or ray.get(buffer.position.remote())
            return RayFeed(buffer, cfg.batch_size, cfg.batches_per_request, cfg.requests_in_flight, position)

        self._t = Trainer(
            cfg,
            task,
            feed_factory,
            ports.reporter(controller, self._incarnation),
            next_seq=next_seq,
            resume_from=Path(resume_from) if resume_from else None,
            publisher=ports.publisher(controller),
            next_weight_version=ray.get(controller.next_weight_version.remote()),
        )
        self._puller = ports.puller(controller, self._t.core, next_seq - 1, cfg.name, self._incarnation)
        return self._t

    @ray.method(concurrency_group="control")
    def recover(self, plan: RestartPlan) -> None:
        """Build the trainer of a restarted process from the plan's checkpoint (None: the
        run's start) and queue its commands applied again, pinned to their steps."""
        # Paused as the run was when the checkpoint was written (start_paused is for the
        # run's start); the pauses and resumes since then are among the records.
        resume_from, records, next_seq = plan.checkpoint, plan.reapply, plan.next_seq
        self._incarnation = plan.incarnation
        paused = paused_at(resume_from) if resume_from else self._cfg.start_paused
        if self._cfg.workers > 1:
            self._start = {"next_seq": next_seq, "resume_from": resume_from, "records": records, "paused": paused,
                           "incarnation": plan.incarnation}
            return
        start = None if resume_from else ray.get(self._buffer.initial_position.remote())
        trainer = self._build(next_seq, resume_from, start)
        trainer.state.paused = paused
        trainer.core.deliver(records)

    @ray.method(concurrency_group="loop")
    def run(self) -> Any:
        """Train until the run ends; called again (by a restarted controller) it waits for
        the loop already running and returns how that ended."""
        self._loop_started = True
        if self._result is None:
            try:
                if self._start is not None:
                    self._result = (True, self._run_workers())
                elif self._t is None or self._puller is None:
                    raise RuntimeError("this trainer was restarted and has not been recovered")
                else:
                    self._puller.start()
                    try:
                        self._result = (True, self._t.run().model_dump(mode="json"))
                    finally:
                        self._puller.stop()
            except Exception as e:
                self._result = (False, e)
        ok, value = self._result
        if not ok:
            raise value
        return value

    def _run_workers(self) -> dict[str, Any]:
        """Run the ranks under Ray Train until the run ends; when a worker is lost, recover
        them all from the newest checkpoint (as the controller does for one trainer)."""
        from ray_interactive.runtime.workers import fit

        while True:
            assert self._start is not None
            try:
                fit(self._cfg, self._controller, self._buffer, **self._start)
                return ray.get(self._controller.status.remote())
            except Exception as e:  # noqa: BLE001 - a lost worker, or a loop that raised
                status = ray.get(self._controller.status.remote())
                if status["status"] in ("failed", "stopped"):  # a rank said why, or it had ended
                    raise
                reason = death_reason(e)
                log.warning("a worker was lost (%s); recovering the worker group", reason)
                plan = ray.get(self._controller.begin_worker_recovery.remote(reason))
                self._start = {"next_seq": plan.next_seq, "resume_from": plan.checkpoint, "records": plan.reapply,
                               "paused": paused_at(plan.checkpoint) if plan.checkpoint else self._cfg.start_paused,
                               "incarnation": plan.incarnation}

    @ray.method(concurrency_group="control")
    def first_use_latencies(self) -> list[float]:
        """Seconds from ingest to first gradient of the latest (up to 100k) fresh rows."""
        return list(self._t.first_use_log) if self._t is not None else []

    @ray.method(concurrency_group="control")
    def ready(self) -> bool:
        return True

    @ray.method(concurrency_group="control")
    def loop_started(self) -> bool:
        """Whether its loop has begun (a process whose loop never starts is restarted again)."""
        return self._loop_started

    @ray.method(concurrency_group="control")
    def pid(self) -> int:
        return os.getpid()

    @ray.method(concurrency_group="control")
    def node_id(self) -> str:
        """The Ray node this actor runs on (where a restart put it)."""
        return ray.get_runtime_context().get_node_id()
