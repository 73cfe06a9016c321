"""The Ray actors of a run: thin shells around the plain classes, all in one place.

* :class:`ControllerActor` - threaded, so a client can block in :meth:`wait_command`
  while others submit; one lock serialises access to the plain :class:`Controller`. It
  runs the trainer's loop and watches it: a trainer whose process dies is restarted by
  Ray (``max_restarts``) and recovered from the newest checkpoint here. Ray restarts the
  controller itself too; it rebuilds from the run directory and takes up its trainer.
* :class:`TrainerActor` - threaded with two concurrency groups: ``loop`` runs the step
  loop, ``control`` receives commands while the loop runs (FIELD-NOTES: ~2 ms answers).
* :class:`BufferActor` - an async actor: ingests share fsyncs (group commit) and the
  trainer's numbered batch requests are served in order; restarted by Ray if it dies.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import ray

from ray_interactive.core.commands import CommandRecord
from ray_interactive.core.config import RunConfig, actor_name
from ray_interactive.core.controller import Controller
from ray_interactive.core.task import load_task
from ray_interactive.data.buffer import DataBuffer
from ray_interactive.data.feeds import RayFeed
from ray_interactive.runtime.retry import actor_restarting, call_with_retry
from ray_interactive.serve.weights import BackgroundPublisher
from ray_interactive.train.trainer import Reporter, Trainer

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
        self._undelivered: list[CommandRecord] = []
        self._pull = False  # the loop runs in another process and pulls its commands
        self._outbox: list[CommandRecord] = []  # delivered, not yet pulled
        self._released: list[CommandRecord] = []  # held through a recovery, not yet pulled
        self._weight_waiters = 0  # threads blocked in wait_weights
        self._ended: tuple[str, Any] | None = None  # ("stopped", final status) / ("failed", why)
        self._closing = False
        self._restarts = 0
        with warnings.catch_warnings():  # Ray's own property trips its actor_id deprecation warning
            warnings.simplefilter("ignore")
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self._c = Controller(RunConfig.model_validate(config), self._deliver, recover="restart" if restarted else recover)
        if restarted:
            self._take_up_run()

    def _take_up_run(self) -> None:
        """After a restart: find the run's trainer and buffer, hand the trainer every
        command still pending (its inbox drops the ones it has) and watch its loop again."""
        cfg = self._c.config
        found = {}
        for role in ("trainer", "buffer"):
            try:
                found[role] = ray.get_actor(actor_name(cfg.name, role), namespace=cfg.namespace)
            except ValueError:
                found[role] = None
        pending = sorted((r for r in self._c.records.values() if r.status.value == "accepted"), key=lambda r: r.seq or 0)
        if found["trainer"] is None or cfg.workers > 1:  # the loop pulls (and dedupes) its commands
            self._trainer, self._buffer, self._pull, self._outbox = found["trainer"], found["buffer"], True, pending
            log.warning("controller restarted; the run's loop pulls its commands")
            if found["trainer"] is not None:
                threading.Thread(target=self._supervise, name="supervise", daemon=True).start()
            return
        self._trainer, self._buffer = found["trainer"], found["buffer"]
        if pending:
            self._trainer.deliver.remote(pending)
        try:  # commands are checked against the trainer's description: have it before serving any
            described = ray.get(self._trainer.describe.remote(), timeout=60)
        except Exception:  # noqa: BLE001 - a trainer being restarted itself: its recovery describes it
            log.warning("the trainer did not describe itself to the restarted controller", exc_info=True)
            described = None
        if described is not None:
            self._c.trainer_snapshot(described[0])
            self._c.command_outcomes([], status=described[1])
        log.warning("controller restarted; took up trainer and buffer of run %s", cfg.name)
        threading.Thread(target=self._supervise, name="supervise", daemon=True).start()

    def attach(self, trainer: Any, buffer: Any, pull: bool = False, supervise: bool = False) -> int:
        """Connect the trainer and buffer once they exist; with ``pull``, the training loop
        runs in a driver process (Hugging Face, a plain loop) and fetches its commands
        with :meth:`pull_commands`; with ``supervise``, this actor starts the trainer's
        loop and restarts a trainer that dies. Returns the number of the first command the
        trainer gets (commands may be accepted before it is attached)."""
        with self._cond:
            self._trainer, self._buffer, self._pull = trainer, buffer, pull
            first = min((r.seq for r in self._undelivered if r.seq is not None), default=self._c.next_seq)
            if self._undelivered:
                if pull:
                    self._outbox.extend(self._undelivered)
                else:
                    trainer.deliver.remote(self._undelivered)
                self._undelivered = []
            self._cond.notify_all()
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
                reason = _death_reason(e)
                if self._restarts >= self._c.config.max_restarts:
                    self._fail(f"the trainer was lost ({reason}) and max_restarts={self._c.config.max_restarts} "
                               "restarts are spent; resume the run from its newest checkpoint")
                    return
                self._restarts += 1
                if not self._restart_trainer(reason):
                    return

    def _watch_recovery(self, ref: Any) -> None:
        """While a restarted trainer recovers: if it has not reported within
        ``SILENT_RESTART_S`` of being given its loop, restart it again (Ray's restart of a
        busy worker has been seen to leave an instance that never runs its loop)."""
        started = time.time()
        while self._c.recovery is not None and not self._closing:
            ready, _ = ray.wait([ref], timeout=1.0)
            if ready:
                return
            heard = float(self._c.trainer_status.get("time", 0.0)) > started
            if not heard and time.time() - started > SILENT_RESTART_S:
                log.warning("the restarted trainer has not reported in %.0f s; restarting it again", SILENT_RESTART_S)
                ray.kill(self._trainer, no_restart=False)  # ray.get(ref) then raises: the loop restarts it
                return

    def _restart_trainer(self, reason: str) -> bool:
        """Wait for Ray to bring the trainer back, then restore it; False if it could not."""
        log.warning("trainer lost (%s); recovering (restart %d)", reason, self._restarts)
        with self._cond:
            path, again, next_seq = self._c.begin_recovery(reason)
            self._c.weight_registry.forget()  # its weights lived in the dead process
            self._cond.notify_all()
        try:
            call_with_retry(lambda: ray.get(self._trainer.ready.remote(), timeout=30), "trainer restart",
                            deadline_s=RESTART_DEADLINE_S, on=actor_restarting)
            ray.get(self._trainer.recover.remote(path, again, next_seq))
        except Exception as e:  # noqa: BLE001 - any failure here ends the run, with why
            self._fail(f"the trainer was lost ({reason}) and could not be restarted: {type(e).__name__}: {e}"[:4000])
            return False
        return True

    def begin_worker_recovery(self, reason: str) -> tuple[str | None, list[CommandRecord], int]:
        """A worker of a multi-worker run was lost: where the worker group restarts from
        (see :meth:`Controller.begin_recovery`); raises once ``max_restarts`` are spent."""
        if self._restarts >= self._c.config.max_restarts:
            raise RuntimeError(f"a worker was lost ({reason}) and max_restarts={self._c.config.max_restarts} restarts "
                               "are spent; resume the run from its newest checkpoint")
        self._restarts += 1
        with self._cond:
            self._outbox = []  # the new rank 0 gets these again from the recovery
            found = self._c.begin_recovery(reason)
            self._c.weight_registry.forget()
            self._cond.notify_all()
            return found

    def _end(self, how: str, what: Any) -> None:
        with self._cond:
            if how == "failed" and self._c.trainer_status.get("status") != "failed":
                self._c.mark_failed(str(what))
            self._ended = (how, what)
            self._cond.notify_all()

    def _fail(self, message: str) -> None:
        log.error(message)
        with self._cond:
            self._c.recovery_failed(message)
            self._ended = ("failed", message)
            self._cond.notify_all()

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

    def pull_commands(self, after_seq: int, timeout: float = 5.0) -> list[CommandRecord]:
        """Accepted commands numbered above ``after_seq`` (which acknowledges the ones
        before), waiting up to ``timeout`` for one: a long poll, answered the moment a
        command is accepted."""
        deadline = time.monotonic() + min(timeout, 60.0)
        with self._cond:
            self._outbox = [r for r in self._outbox if r.seq is not None and r.seq > after_seq]
            while not self._outbox and not self._released:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(left)
            # held through a recovery: numbered below after_seq, given once
            released, self._released = self._released, []
            return released + list(self._outbox)

    def _deliver(self, records: list[CommandRecord]) -> None:
        if self._pull:
            self._outbox.extend(records)
        elif self._trainer is None:
            self._undelivered.extend(records)
        else:
            self._trainer.deliver.remote(records)  # fire-and-forget

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._cond:
            result = getattr(self._c, method)(*args, **kwargs)
            if self._c.released:  # a recovery ended: commands held meanwhile go out
                released, self._c.released = self._c.released, []
                if self._pull:
                    self._released.extend(released)
                else:
                    self._trainer.deliver.remote(released, replayed=True)
            self._cond.notify_all()
            return result

    # commands
    def submit(self, payload: Any, source: str | None = None) -> CommandRecord:
        record = self._call("submit", payload, source)
        if self._c.stop_requested:  # a stop for a run that had ended: release its actors
            self._c.stop_requested = False
            threading.Thread(target=self._release, daemon=True).start()
        return record

    def _release(self) -> None:
        """End a run whose trainer is gone: close, kill its other actors, then this one."""
        time.sleep(0.5)  # the stop's answer goes out first
        release_run(self._c.config.name, self._c.config.namespace, keep_controller=True)
        self.close()
        ray.kill(ray.get_runtime_context().current_actor)

    def refuse(self, payload: Any, message: str) -> CommandRecord:
        return self._call("refuse", payload, message)

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
        return self._call("get_command", command_id)

    def commands(self, limit: int | None = None, newest_first: bool = False) -> list[dict[str, Any]]:
        return self._call("commands", limit, newest_first)

    # trainer events (fire-and-forget from the trainer)
    def command_outcomes(
        self,
        records: list[dict[str, Any]],
        snapshot: dict[str, Any] | None = None,
        status: dict[str, Any] | None = None,
        events: list[Any] | None = None,
    ) -> None:
        self._call("command_outcomes", records, snapshot, status, events)

    def trainer_progress(self, branch: str, status: dict[str, Any], rows: list[Any], events: list[Any] | None = None) -> None:
        self._call("trainer_progress", branch, status, rows, events)

    def trainer_snapshot(self, snapshot: dict[str, Any]) -> None:
        self._call("trainer_snapshot", snapshot)

    def mark_failed(self, message: str) -> None:
        self._call("mark_failed", message)

    def buffer_stats(self, stats: dict[str, Any]) -> None:
        self._call("buffer_stats", stats)

    def data_status(self) -> dict[str, Any]:
        return self._call("data_status")

    # published weights
    def weights_published(self, meta: dict[str, Any], refs: list[Any]) -> None:
        self._call("weights_published", meta, refs)

    def weights(self, version: int | None = None) -> tuple[dict[str, Any], list[Any]] | None:
        """``(metadata, [ref])``: the ref travels inside a list, so callers get the reference."""
        found = self._call("weights", version)
        return None if found is None else (found[0], [found[1]])

    def wait_weights(self, after_version: int | None = None, timeout: float = 30.0) -> tuple[dict[str, Any], list[Any]] | None:
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
                return entry.to_dict(), [entry.ref]
            finally:
                self._weight_waiters -= 1

    def weight_versions(self) -> list[dict[str, Any]]:
        return self._call("weight_versions")

    def next_weight_version(self) -> int:
        return self._call("next_weight_version")

    # queries
    def status(self) -> dict[str, Any]:
        return self._call("status")

    def metrics(self, **kwargs: Any) -> dict[str, Any]:
        return self._call("get_metrics", **kwargs)

    def metric_keys(self, branch: str | None = None) -> list[str]:
        return self._call("metric_keys", branch)

    def checkpoints(self) -> list[dict[str, Any]]:
        return self._call("list_checkpoints")

    def checkpoint_page(self, offset: int = 0, limit: int = 50, branch: str | None = None) -> dict[str, Any]:
        return self._call("checkpoint_page", offset, limit, branch)

    def dashboard(self, **kwargs: Any) -> dict[str, Any]:
        return self._call("dashboard", **kwargs)

    def branches(self) -> dict[str, Any]:
        return self._call("list_branches")

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return dict(self._c.snapshot)

    def next_seq(self) -> int:
        with self._cond:
            return self._c.next_seq

    def config(self) -> dict[str, Any]:
        return self._c.config.model_dump(mode="json")

    def pid(self) -> int:
        return os.getpid()

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        self._closing = True
        self._call("close")


def _death_reason(e: BaseException) -> str:
    first = str(e).strip().splitlines()
    return f"{type(e).__name__}: {first[0][:300]}" if first else type(e).__name__


def paused_at(checkpoint: str) -> bool:
    """Whether the run was paused when the checkpoint was written."""
    return bool(json.loads((Path(checkpoint) / "state.json").read_text())["state"].get("paused"))


def release_run(name: str, namespace: str, keep_controller: bool = False) -> None:
    """Kill whatever actors of run ``name`` are left (trainer, buffer, ingest server and,
    unless ``keep_controller``, its controller); data on disk is untouched."""
    roles = ("trainer", "buffer", "ingest") + (() if keep_controller else ("controller",))
    for role in roles:
        try:
            ray.kill(ray.get_actor(actor_name(name, role), namespace=namespace))  # type: ignore[arg-type]
        except ValueError:
            pass  # not there


@ray.remote(concurrency_groups={"loop": 1, "control": 2})
class TrainerActor:
    """Ray shell of :class:`~ray_interactive.train.trainer.Trainer`.

    Started with ``max_restarts``: when its process dies Ray starts a new one, which waits
    for the controller to :meth:`recover` it from a checkpoint before its loop runs."""

    def __init__(self, config: dict[str, Any], next_seq: int = 1, resume_from: str | None = None) -> None:
        logging.basicConfig(level=logging.INFO)
        self._cfg = cfg = RunConfig.model_validate(config)
        # Found by name, not passed in: a restartable actor's arguments must not hold handles
        # (Ray keeps those in the object store, where a restart may not find them).
        self._controller = ray.get_actor(actor_name(cfg.name, "controller"), namespace=cfg.namespace)
        self._buffer = ray.get_actor(actor_name(cfg.name, "buffer"), namespace=cfg.namespace)
        self._result: tuple[bool, Any] | None = None  # how the loop ended: (ok, status or error)
        self._t: Trainer | None = None
        # Many workers: this actor runs them under Ray Train (train/distributed.py) and
        # recovers them when one is lost; these say where the next start begins.
        self._start: dict[str, Any] | None = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if restarted:  # built by recover(), from the checkpoint the controller names
            return
        if self._cfg.workers > 1:
            self._start = {"next_seq": next_seq, "resume_from": resume_from, "records": [], "paused": None}
        else:
            self._t = self._build(next_seq, resume_from, None)

    def _build(self, next_seq: int, resume_from: str | None, start_position: dict[str, Any] | None) -> Trainer:
        cfg, controller, buffer = self._cfg, self._controller, self._buffer
        task = load_task(cfg.task.target, cfg.task.kwargs)

        def feed_factory(position: dict[str, Any] | None) -> RayFeed:
            if position is None:
                position = start_position or ray.get(buffer.position.remote())
            return RayFeed(buffer, cfg.batch_size, cfg.batches_per_request, cfg.requests_in_flight, position)

        reporter = Reporter(lambda method, *args: getattr(controller, method).remote(*args), ray.get)
        # Weights go into the object store (this process owns them) and their refs to the
        # controller, on a background thread: the step loop only takes the CPU copy.
        publisher = BackgroundPublisher(
            put=ray.put, report=lambda meta, ref: controller.weights_published.remote(meta, [ref]), wait=ray.get
        )
        return Trainer(
            cfg,
            task,
            feed_factory,
            reporter,
            next_seq=next_seq,
            resume_from=Path(resume_from) if resume_from else None,
            publisher=publisher,
            next_weight_version=ray.get(controller.next_weight_version.remote()),
        )

    @ray.method(concurrency_group="control")
    def recover(self, resume_from: str | None, records: list[CommandRecord], next_seq: int) -> None:
        """Build the trainer of a restarted process from ``resume_from`` (None: the run's
        start) and queue ``records`` - commands applied again, pinned to their steps."""
        # Paused as the run was when the checkpoint was written (start_paused is for the
        # run's start); the pauses and resumes since then are among ``records``.
        paused = paused_at(resume_from) if resume_from else self._cfg.start_paused
        if self._cfg.workers > 1:
            self._start = {"next_seq": next_seq, "resume_from": resume_from, "records": records, "paused": paused}
            return
        start = None if resume_from else ray.get(self._buffer.initial_position.remote())
        self._t = self._build(next_seq, resume_from, start)
        self._t.state.paused = paused
        self._t.core.inbox.put(records, replayed=True)

    @ray.method(concurrency_group="loop")
    def run(self) -> dict[str, Any]:
        """Train until the run ends; called again (by a restarted controller) it waits for
        the loop already running and returns how that ended."""
        if self._result is None:
            try:
                if self._start is not None:
                    self._result = (True, self._run_workers())
                elif self._t is None:
                    raise RuntimeError("this trainer was restarted and has not been recovered")
                else:
                    self._result = (True, self._t.run())
            except Exception as e:
                self._result = (False, e)
        ok, value = self._result
        if not ok:
            raise value
        return value

    def _run_workers(self) -> dict[str, Any]:
        """Run the ranks under Ray Train until the run ends; when a worker is lost, recover
        them all from the newest checkpoint (as the controller does for one trainer)."""
        from ray_interactive.train.distributed import fit

        while True:
            assert self._start is not None
            try:
                fit(self._cfg, self._controller, self._buffer, **self._start)
                return ray.get(self._controller.status.remote())
            except Exception as e:  # noqa: BLE001 - a lost worker, or a loop that raised
                status = ray.get(self._controller.status.remote())
                if status["status"] in ("failed", "stopped"):  # a rank said why, or it had ended
                    raise
                reason = _death_reason(e)
                log.warning("a worker was lost (%s); recovering the worker group", reason)
                path, again, next_seq = ray.get(self._controller.begin_worker_recovery.remote(reason))
                self._start = {"next_seq": next_seq, "resume_from": path, "records": again,
                               "paused": paused_at(path) if path else self._cfg.start_paused}

    @ray.method(concurrency_group="control")
    def deliver(self, records: list[CommandRecord], replayed: bool = False) -> None:
        """Queue accepted commands; ``replayed``: held through a recovery, numbered below
        the commands the restarted trainer was given."""
        if self._t is not None:  # a restarted trainer gets its commands with recover()
            self._t.core.inbox.put(records, replayed=replayed)

    @ray.method(concurrency_group="control")
    def describe(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The run's snapshot and status, for a restarted controller (None before recovery)."""
        if self._t is None:
            return None
        return self._t.core.snapshot(), self._t.core.status()

    @ray.method(concurrency_group="control")
    def first_use_latencies(self) -> list[float]:
        """Seconds from ingest to first gradient of the latest (up to 100k) fresh rows."""
        return list(self._t.first_use_log) if self._t is not None else []

    @ray.method(concurrency_group="control")
    def ready(self) -> bool:
        return True

    @ray.method(concurrency_group="control")
    def pid(self) -> int:
        return os.getpid()


class _Turns:
    """Serves numbered requests of one *stream* strictly in order (an async actor does not
    promise call order); a newer stream, opened by its request 0, supersedes the old one,
    whose late requests are answered as stale."""

    def __init__(self, timeout: float = 120.0) -> None:
        self.stream = -1
        self.next = 0
        self.timeout = timeout
        self._cond = asyncio.Condition()

    async def acquire(self, stream: int, seq: int) -> bool:
        """Wait for this request's turn; False if its stream was superseded."""
        async with asyncio.timeout(self.timeout), self._cond:
            verdict = await self._cond.wait_for(lambda: self._ready(stream, seq))
            if verdict == "stale":
                return False
            if stream > self.stream:
                self.stream, self.next = stream, 0
                self._cond.notify_all()  # waiters of the old stream are now stale
            return True

    def _ready(self, stream: int, seq: int) -> str | None:
        if stream < self.stream:
            return "stale"
        if (stream > self.stream and seq == 0) or (stream == self.stream and seq == self.next):
            return "go"
        return None

    async def release(self, stream: int, seq: int) -> None:
        async with self._cond:
            if stream == self.stream and seq == self.next:  # not a superseded stream's late turn
                self.next += 1
                self._cond.notify_all()


class _GroupCommit:
    """One fsync for every ingest written while the previous fsync ran (group commit):
    concurrent ingests share the cost; each is acknowledged only once it is on disk."""

    def __init__(self, buffer: DataBuffer) -> None:
        self.buffer = buffer
        self.written = 0  # ingests written so far
        self.durable = 0  # ingests covered by the last finished fsync
        self._task: asyncio.Future[None] | None = None

    async def wait(self, upto: int) -> None:
        while self.durable < upto:
            if self._task is None:
                self._task = asyncio.ensure_future(self._sync())
            await asyncio.shield(self._task)

    async def _sync(self) -> None:
        try:
            upto, job = self.written, self.buffer.sync_job()
            try:
                await asyncio.get_running_loop().run_in_executor(None, job)
            except OSError:
                # After a failed fsync the kernel may have dropped the dirty pages: what is
                # on disk is unknown. Die, so Ray restarts the actor and it recovers from what
                # the segments really hold; clients retry their unacknowledged batch_ids.
                log.critical("fsync failed; restarting the buffer to recover from disk", exc_info=True)
                os._exit(70)
            self.durable = max(self.durable, upto)
        finally:
            self._task = None


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class BufferActor:
    """Ray shell of :class:`~ray_interactive.data.buffer.DataBuffer`.

    An async actor: ingests are written at once and acknowledged after a shared fsync
    (:class:`_GroupCommit`), and the trainer's batch requests, numbered, are served in
    order (:class:`_Turns`). Everything else runs on the event loop between awaits, so
    the plain buffer is never entered by two calls at once.

    Ray restarts it if its process dies (``max_restarts``); the constructor then rebuilds
    every acknowledged row from the run's segments. Calls in flight at the crash fail
    (no automatic retry: the trainer restores its data position first, and ``ingest``
    retries are made safe by ``batch_id``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        logging.basicConfig(level=logging.INFO)
        cfg = RunConfig.model_validate(config)
        task = load_task(cfg.task.target, cfg.task.kwargs)
        self._cfg = cfg
        self._b = DataBuffer(
            task.data_sources(),
            seed=cfg.seed,
            mixture=cfg.mixture,
            directory=cfg.resolved_run_dir / "buffer",
            config=cfg.buffer,
        )
        with warnings.catch_warnings():  # Ray's own property trips its actor_id deprecation warning
            warnings.simplefilter("ignore")
            self._restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self._controller: Any = None
        self._last_stats = 0.0
        # One sampler state and one order of requests per lane: each rank of a multi-worker
        # run draws its own stream (lane = its rank); a single trainer uses lane 0.
        self._turns: dict[int, _Turns] = collections.defaultdict(_Turns)
        self._lanes: dict[int, dict[str, Any]] = {}  # positions of the lanes not drawing now
        self._lane = 0
        self._commit = _GroupCommit(self._b)

    def _report(self, force: bool = False) -> None:
        """Freshness figures to the controller, at most every ``stats_interval_s``
        (fire-and-forget, riding on calls the buffer gets anyway)."""
        now = time.monotonic()
        if not force and now - self._last_stats < self._cfg.buffer.stats_interval_s:
            return
        self._last_stats = now
        try:
            if self._controller is None:
                self._controller = ray.get_actor(actor_name(self._cfg.name, "controller"), namespace=self._cfg.namespace)
            self._controller.buffer_stats.remote({**self._b.stats(), "restarted": self._restarted})
        except ValueError:  # no controller (a buffer used on its own)
            pass

    async def ingest(self, table: Any, source: str, batch_id: str | None = None) -> dict[str, Any]:
        group = self._cfg.buffer.fsync
        try:
            ack = self._b.ingest(table, source, batch_id, sync=not group)
        finally:
            self._report()
        if group:  # a duplicate waits too: its first copy may not be on disk yet
            self._commit.written += 1
            await self._commit.wait(self._commit.written)
        return ack

    async def next_batches(
        self,
        batch_size: int,
        count: int = 1,
        stream: int | None = None,
        seq: int = 0,
        position: dict[str, Any] | None = None,
        lane: int = 0,
    ) -> Any:
        """Draw batches; with ``stream``/``seq`` (the trainer's feed) requests are served in
        order and the first of a stream restores ``position`` first. A request of a
        superseded stream returns ``{"stale": current stream}``."""
        if stream is None:
            chunk = self._draw(lane, batch_size, count, position)
        else:
            turns = self._turns[lane]
            if not await turns.acquire(stream, seq):
                return {"stale": turns.stream}
            try:
                chunk = self._draw(lane, batch_size, count, position)
            finally:
                await turns.release(stream, seq)
        self._report()
        return chunk

    def _draw(self, lane: int, batch_size: int, count: int, position: dict[str, Any] | None) -> Any:
        if lane != self._lane:  # switch the sampler to this lane's state
            self._lanes[self._lane] = self._b.position()
            if position is None and lane in self._lanes:
                self._b.restore(self._lanes.pop(lane))
            self._lane = lane
        return self._b.next_batches(batch_size, count, position)

    async def position(self) -> dict[str, Any]:
        return self._b.position()

    async def initial_position(self, rank: int = 0, world: int = 1) -> dict[str, Any]:
        """The position a run (or rank ``rank`` of ``world``) starts drawing from; a
        trainer restarted before its first checkpoint begins here again."""
        return self._b.initial_position(rank, world)

    async def restore(self, position: dict[str, Any]) -> None:
        self._b.restore(position)

    async def mixture(self) -> dict[str, float]:
        return self._b.mixture()

    async def set_mixture(self, weights: dict[str, float]) -> dict[str, float]:
        return self._b.set_mixture(weights)

    async def sources(self) -> dict[str, Any]:
        return self._b.sources()

    async def stats(self) -> dict[str, Any]:
        return {**self._b.stats(), "restarted": self._restarted}

    async def read(self, source: str, start: int = 0, stop: int | None = None, columns: list[str] | None = None) -> Any:
        return self._b.read(source, start, stop, columns)

    async def pid(self) -> int:
        return os.getpid()

    async def close(self) -> None:
        self._report(force=True)
        self._b.close()

    async def ready(self) -> bool:
        return True
