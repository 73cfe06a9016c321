"""The controller actor: a locked shell around :class:`~ray_interactive.core.controller.Controller`.

Threaded (``max_concurrency``), so a client can block in :meth:`ControllerActor.wait_command`
and a training loop in :meth:`ControllerActor.pull_commands` while others submit; one lock
(a condition) serialises access to the plain controller, and every change wakes the
waiters. It also runs our trainer's loop and watches it: a trainer whose process dies is
restarted by Ray (``max_restarts``) and recovered from the newest checkpoint here. Ray
restarts the controller itself too; it rebuilds from the run directory and takes up its
trainer (whose loop pulls its commands again).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import ray

from ray_interactive.core.commands import CommandRecord
from ray_interactive.core.config import RunConfig, actor_name
from ray_interactive.core.controller import Controller
from ray_interactive.core.messages import (
    BufferStats,
    Delivery,
    Outcomes,
    Progress,
    ReplicaOrders,
    ReplicaReport,
    Snapshot,
)
from ray_interactive.core.metrics import PartWriter
from ray_interactive.core.recovery import RestartPlan
from ray_interactive.core.retry import call_with_retry
from ray_interactive.core.weights import WeightVersion
from ray_interactive.runtime.ingest_server import write_private
from ray_interactive.runtime.lifecycle import actor_restarting, death_reason, release_run

log = logging.getLogger(__name__)

#: Calls that may block in ControllerActor.wait_weights at once (of its 32 threads).
MAX_WEIGHT_WAITERS = 16
#: How long a restarted trainer (or controller) may take to come back before the run fails.
RESTART_DEADLINE_S = 120.0
#: How long a recovered trainer may run its loop without a word before it is restarted again.
SILENT_RESTART_S = 30.0


@ray.remote(num_cpus=0, max_concurrency=32, max_restarts=-1, max_task_retries=-1)
class ControllerActor:
    """Ray shell of :class:`~ray_interactive.core.controller.Controller`.

    Ray restarts it if its process dies, and retries calls made meanwhile (a repeated
    ``submit`` is answered from the log: commands carry their id). The restarted actor
    rebuilds from the run directory and takes up the run's trainer and buffer by name."""

    def __init__(self, config: dict[str, Any], recover: bool = False) -> None:
        logging.basicConfig(level=logging.INFO)
        self._cond = threading.Condition()
        self._trainer: Any = None
        self._buffer: Any = None
        self._weight_waiters = 0  # threads blocked in wait_weights
        self._ended: tuple[str, Any] | None = None  # ("stopped", final status) / ("failed", why)
        self._closing = False
        self._released: set[str] = set()  # pollers whose loop has ended (one per loop start)
        self._restarts = 0
        with warnings.catch_warnings():  # Ray's own property trips its actor_id deprecation warning
            warnings.simplefilter("ignore")
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self._c = Controller(RunConfig.model_validate(config), recover="restart" if restarted else recover)
        self._parts: PartWriter | None = None
        if not self._c.read_only:  # metric parts are written off the lock commands wait on
            self._parts = self._c.write_part = PartWriter(self._part_error)
        self._api = self._serve_api()
        if restarted:
            self._take_up_run()

    def _serve_api(self) -> Any:
        """Serve the control API (the CLI's fast path) and record where in the run directory;
        a run that cannot serve it still runs (its clients go through Ray)."""
        from ray_interactive.serve.control_client import TOKEN_FILE, URL_FILE
        from ray_interactive.serve.control_http import make_control_app
        from ray_interactive.serve.ingest_http import serve_in_thread

        cfg = self._c.config
        if cfg.control_api is None or self._c.read_only:
            return None
        run_dir = cfg.resolved_run_dir
        try:
            token_file = run_dir / TOKEN_FILE
            token = token_file.read_text().strip() if token_file.exists() else ""
            if len(token) < 16:  # a resumed or restarted run keeps its token
                token = secrets.token_urlsafe(32)
                write_private(token_file, token)
            server = serve_in_thread(make_control_app(self, token), cfg.control_api.host, cfg.control_api.port)
            (run_dir / URL_FILE).write_text(server.url + "\n")
        except (OSError, RuntimeError) as e:
            log.warning("run %s: no control API (%s); clients attach through Ray", cfg.name, e)
            return None
        return server

    def _part_error(self, message: str | None) -> None:
        with self._cond:
            c = self._c
            if message is not None or c.storage_error == c.part_error:  # not over the command log's
                c.storage_error = message
            c.part_error = message

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Controller]:
        """The plain controller, under the lock; whatever changed wakes the waiters."""
        with self._cond:
            try:
                yield self._c
            finally:
                self._cond.notify_all()

    def _take_up_run(self) -> None:
        """After a restart: find the run's trainer and buffer and watch the loop again (it
        pulls the commands still pending, and describes itself again when asked)."""
        cfg = self._c.config
        for role in ("trainer", "buffer"):
            try:
                setattr(self, f"_{role}", ray.get_actor(actor_name(cfg.name, role), namespace=cfg.namespace))
            except ValueError:
                pass
        log.warning("controller restarted; took up the run %s (its loop pulls its commands)", cfg.name)
        if self._trainer is not None:
            threading.Thread(target=self._supervise, name="supervise", daemon=True).start()

    def attach(self, trainer: Any, buffer: Any, supervise: bool = False) -> int:
        """Know the trainer and buffer once they exist (None for a loop in a driver process:
        Hugging Face, a plain loop); with ``supervise``, this actor starts the trainer's
        loop and restarts a trainer that dies. Returns the number of the first command the
        loop gets (commands may be accepted before it is attached; it pulls them)."""
        with self._locked():
            self._trainer, self._buffer = trainer, buffer
        first = self.first_command()
        if supervise:
            threading.Thread(target=self._supervise, name="supervise", daemon=True).start()
        return first

    # -- the trainer's loop ------------------------------------------------------------
    def _supervise(self) -> None:
        """Run the trainer's loop until it ends; restart the trainer when its process dies."""
        while True:
            try:
                ref = self._trainer.run.remote()
                self._watch_recovery(ref)
                result = ray.get(ref)
                self._end("stopped", result)
                return
            except ray.exceptions.RayTaskError as e:  # the loop raised: the trainer reported why
                self._end("failed", f"{type(e.cause).__name__ if e.cause else 'error'}: {e.cause or e}"[:4000])
                return
            except ray.exceptions.RayActorError as e:  # its process is gone
                if self._closing:
                    return
                reason = death_reason(e)
                if self._restarts >= self._c.config.max_restarts:
                    self._fail(f"the trainer was lost ({reason}) and max_restarts={self._c.config.max_restarts} "
                               "restarts are spent; resume the run from its newest checkpoint")
                    return
                self._restarts += 1
                if not self._restart_trainer(reason):
                    return

    def _watch_recovery(self, ref: Any) -> None:
        """While a restarted trainer recovers: if it has not reported within
        ``SILENT_RESTART_S`` of being given its loop and its loop has not even begun, restart
        it again (Ray's restart of a busy worker has been seen to leave an instance that never
        runs its loop). A loop that has begun is only slow (a busy machine): it is left to be."""
        started = time.time()
        while self._c.recovery is not None and not self._closing:
            ready, _ = ray.wait([ref], timeout=1.0)
            if ready:
                return
            heard = self._c.trainer_status.time > started
            if not heard and time.time() - started > SILENT_RESTART_S:
                if self._loop_begun():
                    started = time.time()  # slow, not stuck: look again later
                    continue
                log.warning("the restarted trainer's loop has not begun in %.0f s; restarting it again",
                            SILENT_RESTART_S)
                ray.kill(self._trainer, no_restart=False)  # ray.get(ref) then raises: the loop restarts it
                return

    def _loop_begun(self) -> bool:
        try:
            return bool(ray.get(self._trainer.loop_started.remote(), timeout=10))
        except Exception:  # noqa: BLE001 - not answering: treat as stuck
            return False

    def _restart_trainer(self, reason: str) -> bool:
        """Wait for Ray to bring the trainer back, then restore it; False if it could not."""
        log.warning("trainer lost (%s); recovering (restart %d)", reason, self._restarts)
        with self._locked() as c:
            plan = c.begin_recovery(reason)
            c.weight_registry.forget()  # its weights lived in the dead process
        try:
            call_with_retry(lambda: ray.get(self._trainer.ready.remote(), timeout=30), "trainer restart",
                            deadline_s=RESTART_DEADLINE_S, on=actor_restarting)
            ray.get(self._trainer.recover.remote(plan))
        except Exception as e:  # noqa: BLE001 - any failure here ends the run, with why
            self._fail(f"the trainer was lost ({reason}) and could not be restarted: {type(e).__name__}: {e}"[:4000])
            return False
        return True

    def begin_worker_recovery(self, reason: str) -> RestartPlan:
        """A worker of a multi-worker run was lost: where the worker group restarts from
        (see :meth:`Controller.begin_recovery`); raises once ``max_restarts`` are spent."""
        if self._restarts >= self._c.config.max_restarts:
            raise RuntimeError(f"a worker was lost ({reason}) and max_restarts={self._c.config.max_restarts} restarts "
                               "are spent; resume the run from its newest checkpoint")
        self._restarts += 1
        with self._locked() as c:
            found = c.begin_recovery(reason)
            c.weight_registry.forget()
            return found

    def _end(self, how: str, what: Any) -> None:
        with self._locked() as c:
            if how == "failed" and c.trainer_status.status.value != "failed":
                c.mark_failed(str(what))
            self._ended = (how, what)

    def _fail(self, message: str) -> None:
        log.error(message)
        with self._locked() as c:
            c.recovery_failed(message)
            self._ended = ("failed", message)

    def wait_end(self, timeout: float = 30.0) -> tuple[str, Any] | None:
        """Block until the run's loop ends: ``("stopped", final status)`` or ``("failed",
        why)``; None after ``timeout``."""
        deadline = time.monotonic() + min(timeout, 300.0)
        with self._cond:
            while self._ended is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return self._ended

    # -- commands ----------------------------------------------------------------------
    def submit(self, payload: Any, source: str | None = None) -> CommandRecord:
        with self._locked() as c:
            record = c.submit(payload, source)
            release, c.stop_requested = c.stop_requested, False
        if release:  # a stop for a run that had ended: release its actors
            threading.Thread(target=self._release, daemon=True).start()
        return record

    def _release(self) -> None:
        """End a run whose trainer is gone: close, kill its other actors, then this one."""
        time.sleep(0.5)  # the stop's answer goes out first
        release_run(self._c.config.name, self._c.config.namespace, keep_controller=True)
        self.close()
        ray.kill(ray.get_runtime_context().current_actor)

    def refuse(self, payload: Any, message: str) -> CommandRecord:
        with self._locked() as c:
            return c.refuse(payload, message)

    def pull_commands(self, after_seq: int, timeout: float = 5.0, incarnation: int = 0,
                      poller: str | None = None) -> Delivery:
        """A training loop's long poll: the accepted commands numbered above ``after_seq``
        (which acknowledges the ones before), answered the moment there is one (or the
        controller needs the run described again); empty after ``timeout``, or at once
        once ``poller`` is released (:meth:`release_poller`). A trainer a recovery
        replaced (``incarnation``) gets nothing, after the timeout."""
        deadline = time.monotonic() + min(timeout, 60.0)
        with self._cond:
            while (incarnation < self._c.incarnation or not self._c.outbox.ready(after_seq)) \
                    and not (self._c.needs_description and incarnation >= self._c.incarnation) \
                    and not (poller is not None and poller in self._released):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._c.pull(after_seq, incarnation)

    def release_poller(self, poller: str) -> None:
        """A loop is ending: answer its long poll now (and any it still makes) instead of
        at the timeout, so it can join the thread that polls without waiting it out."""
        with self._cond:
            self._released.add(poller)
            self._cond.notify_all()

    def wait_command(self, command_id: str, timeout: float = 30.0) -> CommandRecord | None:
        """Block until the command is applied, failed or rejected (or ``timeout``)."""
        deadline = time.monotonic() + min(timeout, 300.0)
        with self._cond:
            while True:
                rec = self._c.get_command(command_id)
                left = deadline - time.monotonic()
                if rec is None or rec.status.is_final or left <= 0:
                    return rec
                self._cond.wait(left)

    def get_command(self, command_id: str) -> CommandRecord | None:
        with self._locked() as c:
            return c.get_command(command_id)

    def commands(self, limit: int | None = None, newest_first: bool = False) -> list[dict[str, Any]]:
        with self._locked() as c:
            return c.commands(limit, newest_first)

    # -- what the loop reports (fire-and-forget) -----------------------------------------
    def command_outcomes(self, report: Outcomes) -> None:
        with self._locked() as c:
            c.command_outcomes(report)

    def trainer_progress(self, report: Progress) -> None:
        with self._locked() as c:
            flushed, parts = c.trainer_progress(report), self._parts
        if flushed and parts is not None:  # off the lock: the loop waits for this answer, not the commands
            parts.drain(timeout=5.0)  # a part is written in ms; a full disk (retried) must not hold the loop long

    def trainer_snapshot(self, snapshot: Snapshot) -> None:
        with self._locked() as c:
            c.trainer_snapshot(snapshot)

    def mark_failed(self, message: str) -> None:
        with self._locked() as c:
            c.mark_failed(message)

    def buffer_stats(self, stats: BufferStats) -> None:
        with self._locked() as c:
            c.buffer_stats(stats)

    def data_status(self) -> dict[str, Any]:
        with self._locked() as c:
            return c.data_status()

    # -- published weights ---------------------------------------------------------------
    def weights_published(self, version: WeightVersion) -> None:
        with self._locked() as c:
            c.weights_published(version)

    def weights(self, version: int | None = None) -> WeightVersion | None:
        """The latest version (or ``version``) with its ``ref`` (nested: callers get the reference)."""
        with self._locked() as c:
            return c.weights(version)

    def wait_weights(self, after_version: int | None = None, timeout: float = 30.0) -> WeightVersion | None:
        """Block until a version newer than ``after_version`` (any, for None) is published,
        then return the latest as :meth:`weights` does (None after ``timeout``).

        At most ``MAX_WEIGHT_WAITERS`` calls block at once, so that many subscribers cannot
        take every thread of this actor; the others get None at once and poll.
        """
        deadline = time.monotonic() + min(timeout, 300.0)
        with self._cond:
            entry = self._c.weight_registry.newer_than(after_version)
            if entry is None and self._weight_waiters >= MAX_WEIGHT_WAITERS:
                return None
            self._weight_waiters += 1
            try:
                while entry is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    self._cond.wait(left)
                    entry = self._c.weight_registry.newer_than(after_version)
                return entry
            finally:
                self._weight_waiters -= 1

    def weight_versions(self) -> list[dict[str, Any]]:
        with self._locked() as c:
            return c.weight_versions()

    def next_weight_version(self) -> int:
        with self._locked() as c:
            return c.next_weight_version()

    # -- the deployed replicas ------------------------------------------------------------
    def replica_report(self, report: ReplicaReport) -> ReplicaOrders:
        with self._locked() as c:
            return c.replica_report(report)

    def replicas(self) -> list[dict[str, Any]]:
        with self._locked() as c:
            return c.replicas()

    def rollout(self) -> dict[str, Any]:
        with self._locked() as c:
            return c.rollout()

    # -- queries -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._locked() as c:
            return c.status()

    def metrics(self, **kwargs: Any) -> dict[str, Any]:
        with self._locked() as c:
            return c.get_metrics(**kwargs)

    def metric_keys(self, branch: str | None = None) -> list[str]:
        with self._locked() as c:
            return c.metric_keys(branch)

    def checkpoints(self) -> list[dict[str, Any]]:
        with self._locked() as c:
            return c.list_checkpoints()

    def checkpoint_page(self, offset: int = 0, limit: int = 50, branch: str | None = None) -> dict[str, Any]:
        with self._locked() as c:
            return c.checkpoint_page(offset, limit, branch)

    def dashboard(self, **kwargs: Any) -> dict[str, Any]:
        with self._locked() as c:
            return c.dashboard(**kwargs)

    def branches(self) -> dict[str, Any]:
        with self._locked() as c:
            return c.list_branches()

    def snapshot(self) -> dict[str, Any]:
        with self._locked() as c:
            return c.snapshot_view()

    def next_seq(self) -> int:
        with self._locked() as c:
            return c.next_seq

    def first_command(self) -> int:
        """The number of the first command a loop starting now gets (accepted ones wait for it)."""
        with self._locked() as c:
            return min((r.seq for r in c.accepted() if r.seq is not None), default=c.next_seq)

    def ready(self) -> bool:
        return True

    def config(self) -> dict[str, Any]:
        return self._c.config.model_dump(mode="json")

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        """The Ray node this actor runs on (where a restart put it)."""
        return ray.get_runtime_context().get_node_id()

    def flush(self) -> None:
        """Metrics and status on disk when this returns."""
        with self._locked() as c:
            c.flush()
            parts = self._parts
        if parts is not None:
            parts.drain()

    def close(self) -> None:
        self._closing = True
        with self._locked() as c:
            c.close()
            parts, self._parts, c.write_part = self._parts, None, None  # written here from now on
        if parts is not None:
            parts.close()
        if self._api is not None:  # the run is over: its clients read the run directory now
            from ray_interactive.serve.control_client import URL_FILE

            self._api.stop(timeout=2.0)
            self._api = None
            (self._c.config.resolved_run_dir / URL_FILE).unlink(missing_ok=True)
