"""The trainer: owns model, optimizer and schedule, and runs the step loop.

The loop reads top to bottom (:meth:`Trainer.run`): apply due commands, get the next
batches (prefetched), forward/backward over the micro-batches, clip, check the step is
finite, optimizer step, record metrics. Everything interactive sits in small calls around
that: the inbox is filled by another thread, batches were requested steps ago, metrics
leave in the background every ``metrics_interval_s``. The step never waits for another
actor. A step whose loss or gradient norm is not finite never reaches the weights; the
health guard (:mod:`ray_interactive.health`) decides what follows.

The trainer talks to the controller through a :class:`Reporter` (fire-and-forget) and
to the data through a feed (:mod:`ray_interactive.feeds`), and publishes weights through
a publisher (:mod:`ray_interactive.weights`), so this class has no Ray in it and unit
tests drive it in-process.
"""

from __future__ import annotations

import collections
import copy
import json
import logging
import math
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ray_interactive import schedules
from ray_interactive.checkpoints import (
    CheckpointInfo,
    capture_rng,
    checkpoint_id,
    list_checkpoints,
    read_checkpoint,
    restore_rng,
    write_checkpoint,
)
from ray_interactive.commands import (
    Cancel,
    CommandRecord,
    CommandStatus,
    Evaluate,
    LoadCheckpoint,
    Pause,
    PublishWeights,
    Resume,
    SaveCheckpoint,
    SetDataMixture,
    SetGradAccumulation,
    SetGradClip,
    SetLRSchedule,
    Stop,
    UpdateModule,
    UpdateOptimizer,
)
from ray_interactive.config import RunConfig
from ray_interactive.feeds import Batch
from ray_interactive.health import HealthGuard, Verdict, describe_values, nonfinite_tensors
from ray_interactive.hparams import apply_update, describe_optimizer, group_name, validate_update
from ray_interactive.inbox import CommandInbox
from ray_interactive.modules import apply_module_op, describe_modules, validate_module_op
from ray_interactive.task import Task
from ray_interactive.weights import Publisher, pack_state

log = logging.getLogger(__name__)


class Feed(Protocol):
    """Where batches come from (see :mod:`ray_interactive.feeds`)."""

    position: dict[str, Any]

    def next(self) -> Batch | None: ...

    def reset(self, position: dict[str, Any], weights: dict[str, float] | None = None) -> None: ...


class Reporter:
    """Sends trainer events to the controller without waiting for an answer.

    ``send(method, *args)`` is ``getattr(controller, method).remote(*args)`` under Ray,
    a direct call in-process. Method names are fixed here, never taken from input.
    Checkpoint, branch and rewind events are queued and ride along with the next
    progress or outcomes call, so the controller learns of a checkpoint no later than of
    the status or command outcome that mentions it (separate calls may be reordered).
    """

    def __init__(self, send: Callable[..., Any], wait: Callable[[list[Any]], Any] | None = None) -> None:
        self._sender = send
        self._wait = wait
        self._recent: collections.deque[Any] = collections.deque(maxlen=256)
        self._events: list[tuple[str, tuple[Any, ...]]] = []

    def _send(self, method: str, *args: Any) -> None:
        self._recent.append(self._sender(method, *args))

    def _take_events(self) -> list[tuple[str, tuple[Any, ...]]]:
        events, self._events = self._events, []
        return events

    def progress(self, branch: str, status: dict[str, Any], rows: list[tuple[int, float, dict[str, float]]]) -> None:
        self._send("trainer_progress", branch, status, rows, self._take_events())

    def outcomes(
        self, records: list[CommandRecord], snapshot: dict[str, Any] | None = None, status: dict[str, Any] | None = None
    ) -> None:
        """Outcomes and the state they left, in one call: whoever sees "applied" sees the
        new settings, status and checkpoints too."""
        self._send("command_outcomes", [r.model_dump(mode="json") for r in records], snapshot, status, self._take_events())

    def snapshot(self, snapshot: dict[str, Any]) -> None:
        self._send("trainer_snapshot", snapshot)

    def checkpoint(self, info: CheckpointInfo) -> None:
        self._events.append(("checkpoint", (info.to_dict(),)))

    def branch(self, name: str, parent: str, checkpoint: str, step: int) -> None:
        self._events.append(("branch", (name, parent, checkpoint, step)))

    def rewind(self, branch: str, step: int) -> None:
        self._events.append(("rewind", (branch, step)))

    def checkpoints_removed(self, ids: list[str]) -> None:
        self._events.append(("checkpoints_removed", (ids,)))

    def event(self, kind: str, message: str, step: int, branch: str, failed: bool = False,
              submit: list[dict[str, Any]] | None = None) -> None:
        """Something the run did on its own, for the command history (and ``submit``: the
        commands it asks the controller to send on its behalf, source ``system``)."""
        info = {"kind": kind, "message": message, "step": step, "branch": branch, "time": time.time(), "failed": failed}
        self._events.append(("event", ({**info, "submit": submit or []},)))

    def sync(self) -> None:
        """Wait until the recent events have reached the controller (at the end of a run)."""
        if self._wait is not None:
            self._wait([r for r in self._recent if r is not None])
        self._recent.clear()


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


class Trainer:
    """Model, optimizer, schedule and the interactive step loop."""

    def __init__(
        self,
        config: RunConfig,
        task: Task,
        feed_factory: Callable[[dict[str, Any] | None], Feed],
        reporter: Reporter,
        *,
        next_seq: int = 1,
        resume_from: Path | None = None,
        publisher: Publisher | None = None,
        next_weight_version: int = 1,
    ) -> None:
        self.config = config
        self.task = task
        self.reporter = reporter
        self.run_dir = config.resolved_run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.device = resolve_device(config.device)
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        torch.manual_seed(config.seed)

        self.model = task.build_model().to(self.device)
        self.optimizer = task.build_optimizer(self.model, config.lr)
        for g in self.optimizer.param_groups:
            g["lr"] = float(g["lr"])  # a command's lr must not be silently cast elsewhere
        sc = config.schedule
        self.schedule = schedules.start(
            sc.kind, 0, [g["lr"] for g in self.optimizer.param_groups], sc.steps, sc.min_lr_ratio, sc.gamma, sc.warmup_steps
        )
        self.grad_clip = config.grad_clip
        self.grad_accumulation = config.grad_accumulation
        self.step = 0
        self.branch = "main"
        self.samples_seen = 0
        self.paused = config.start_paused
        self.status_message: str | None = None  # why the run is paused or waiting, until it goes on
        self.waiting_for_data = False
        self.guard = HealthGuard(config.health)
        self.stopping: str | None = None  # why the run is ending, once it is
        self.ended: str | None = None  # "stopped" or "failed" once the loop is over
        self.last_checkpoint: str | None = None
        self._checkpointed_at: tuple[str, int] | None = None
        self.inbox = CommandInbox(next_seq)
        self.publisher = publisher  # None: weights are not published (in-process use)
        self._next_weight_version = next_weight_version
        self._published_at: tuple[str, int] | None = None  # (branch, step) of the last version
        self._params = self._trainable()
        self._pending_rows: list[tuple[int, float, dict[str, Any]]] = []
        self._first_use: list[np.ndarray] = []  # seconds from ingest to first gradient, since the last report
        self.first_use_log: collections.deque[float] = collections.deque(maxlen=100_000)  # the same, kept for benchmarks
        self._last_report = 0.0
        self._throughput = 0.0
        self._modules_view: dict[str, Any] | None = None  # describe_modules(), cached
        self._cancelled: list[CommandRecord] = []  # withdrawn by the cancel being applied
        self._step_started = time.perf_counter()
        # The run's checkpoints (id -> info), kept as they are written and removed, and the
        # ones branches were forked from (never removed by the retention policy).
        self._checkpoints: dict[str, CheckpointInfo] = {c.id: c for c in list_checkpoints(self.ckpt_dir)}
        self._removed_parents: dict[str, str | None] = {}  # removed by retention -> their parent
        self._branch_points: set[str] = _branch_points(self.run_dir)

        position = None
        if resume_from is not None:
            position = self._load(resume_from)
            self.reporter.rewind(self.branch, self.step + 1)
        self.feed = feed_factory(position)

        self._handlers: dict[type, Callable[[Any], str]] = {
            UpdateOptimizer: self._update_optimizer,
            SetLRSchedule: self._set_lr_schedule,
            SetGradClip: self._set_grad_clip,
            SetGradAccumulation: self._set_grad_accumulation,
            Pause: self._pause,
            Resume: self._resume,
            Stop: self._stop,
            SaveCheckpoint: self._save_checkpoint,
            LoadCheckpoint: self._load_checkpoint,
            Evaluate: self._evaluate,
            SetDataMixture: self._set_data_mixture,
            UpdateModule: self._update_module,
            PublishWeights: self._publish_weights,
            Cancel: self._cancel,
        }

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train until stopped (command, ``max_steps``) or failed; return the final status."""
        self.reporter.snapshot(self.snapshot())
        self._report(force=True)
        if self.config.publish_every:  # a deployed model following the run gets weights at once
            self._try_publish("start")
        try:
            while True:
                if self.inbox.has_due(self.step):
                    self._apply_due_commands()
                if self.stopping:
                    break
                if self.paused:
                    self.inbox.wait(0.2)
                    continue
                if self.config.max_steps is not None and self.step >= self.config.max_steps:
                    self.stopping = f"reached max_steps={self.config.max_steps}"
                    break
                batches = self._next_batches()
                if batches is None:
                    self._wait_for_data()
                    continue
                if self._train_step(batches):
                    self._after_step()
            self._finish()
        except Exception as e:
            log.exception("training failed")
            self.stopping = f"failed: {type(e).__name__}: {e}"
            self.ended = "failed"
            self._report(force=True, message=traceback.format_exc(limit=8))
            self.reporter.sync()
            raise
        return self.status()

    def _next_batches(self) -> list[Batch] | None:
        """The ``grad_accumulation`` batches of the next step; None if there is no data."""
        self._step_started = time.perf_counter()  # a step's time includes waiting for its data
        batches: list[Batch] = []
        while len(batches) < self.grad_accumulation:
            batch = self.feed.next()
            if batch is None:
                if not batches:
                    return None
                time.sleep(0.05)  # mid-cycle: wait for data, never apply commands
                continue
            batches.append(batch)
        if self.waiting_for_data:
            self.waiting_for_data, self.status_message = False, None
        return batches

    def _train_step(self, batches: list[Batch]) -> bool:
        """One optimizer step over the micro-batches; False if the health guard skipped it."""
        t0 = self._step_started
        self._sync_lrs()
        losses, extras = [], {}
        for batch in batches:
            out = self.task.loss(self.model, self.task.collate(batch.table, self.device))
            loss, extra = (out if isinstance(out, tuple) else (out, {}))
            (loss / len(batches)).backward()
            losses.append(loss.detach())
            for k, v in extra.items():  # averaged over micro-batches, like the loss
                extras[k] = extras.get(k, 0.0) + v / len(batches)
        loss = torch.stack(losses).mean() if len(losses) > 1 else losses[0]
        grad_norm = self._clip_gradients()
        if not _finite(loss, grad_norm):  # never let it reach the weights
            self.optimizer.zero_grad(set_to_none=True)
            self._non_finite_step(loss, grad_norm)
            return False
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.guard.good_step()
        metas = [b.meta for b in batches]

        samples = self.config.batch_size * len(batches)
        self.samples_seen += samples
        dt = time.perf_counter() - t0
        self._throughput = samples / dt if self._throughput == 0 else 0.9 * self._throughput + 0.1 * samples / dt
        row: dict[str, Any] = {
            "loss": loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": grad_norm,
            "step_time_s": dt,
            "samples_per_s": samples / dt,
            **extras,
        }
        for m in metas:  # what the mixture actually delivered
            for source, count in m["counts"].items():
                row[f"mix/{source}"] = row.get(f"mix/{source}", 0.0) + count / samples
        self._freshness(metas, row)
        self._pending_rows.append((self.step, time.time(), row))
        return True

    def _freshness(self, metas: list[dict[str, Any]], row: dict[str, Any]) -> None:
        """How old the live rows of this step are, now that they reach a gradient; and for
        rows used for the first time, how long they took (p50/p95 at each report)."""
        live = [m for m in metas if m.get("live_rows")]
        if not live:
            return
        now = time.time()
        row["data/freshest_age_s"] = now - max(m["newest_time"] for m in live)
        rows = sum(m["live_rows"] for m in live)
        row["data/mean_age_s"] = now - sum(m["mean_time"] * m["live_rows"] for m in live) / rows
        for m in live:
            if "first_use_times" in m:
                lat = now - np.asarray(m["first_use_times"])
                self._first_use.append(lat)
                self.first_use_log.extend(lat.tolist())

    def _clip_gradients(self) -> torch.Tensor:
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads:
            return torch.zeros(())
        norm = torch.nn.utils.get_total_norm(grads)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self._params, self.grad_clip, norm)
        return norm

    def _wait_for_data(self) -> None:
        """No source with a weight has rows: say so in the status, stay responsive."""
        if not self.waiting_for_data:
            weighted = [f"{k}={v:g}" for k, v in self.feed.position["weights"].items() if v > 0]
            self.waiting_for_data = True
            self.status_message = (
                f"waiting for data: no source with a weight > 0 has rows yet (weights: {', '.join(weighted) or 'none'}); "
                "ingest rows or change the mixture"
            )
            self._report(force=True)
        else:
            self._report()
        self.inbox.wait(0.1)

    # -- health ------------------------------------------------------------------------
    def _non_finite_step(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """The step's loss or gradient norm was not finite (its gradients are dropped):
        react by the run's policy and leave a trace in the status, metrics and history."""
        what = describe_values(loss=float(loss), grad_norm=float(grad_norm))
        weights_ok = not nonfinite_tensors(self.model.named_parameters())
        target = self._rollback_target() if self.config.health.on_non_finite == "rollback" else None
        verdict = self.guard.non_finite(what, self.step + 1, weights_ok, target)
        log.warning("%s", verdict.message)
        self._pending_rows.append((self.step, time.time(), {"health/skipped_steps": self.guard.skipped_total}))
        if verdict.action == "skip":
            self.status_message = verdict.message
            if self.guard.in_a_row == 1:  # one history entry per streak, not one per step
                self.reporter.event("skip_step", verdict.message, self.step, self.branch)
            self._report()
            return
        self.paused = True
        self.status_message = verdict.message
        if verdict.action == "pause":
            self.reporter.event("pause", verdict.message, self.step, self.branch)
        else:
            self.reporter.event("rollback", verdict.message, self.step, self.branch, submit=self._rollback_commands(verdict))
        self._report(force=True)

    def _rollback_commands(self, verdict: Verdict) -> list[dict[str, Any]]:
        """Load the checkpoint, lower each group's lr, go on: commands the controller sends
        as ``system`` (so they are numbered, logged and replayed like any other)."""
        factor = self.config.health.lr_factor
        lrs = {group_name(g, i): g["lr"] * factor for i, g in enumerate(self.optimizer.param_groups)}
        if len(set(lrs.values())) == 1:
            updates = [{"kind": "update_optimizer", "params": {"lr": next(iter(lrs.values()))}}]
        else:
            updates = [{"kind": "update_optimizer", "params": {"lr": lr}, "group": g} for g, lr in lrs.items()]
        return [{"kind": "load_checkpoint", "checkpoint_id": verdict.target}, *updates, {"kind": "resume"}]

    def _rollback_target(self) -> str | None:
        """The newest checkpoint of this lineage with finite weights that is still on disk."""
        cid, seen = self.last_checkpoint, set()
        while cid is not None and cid not in seen:
            seen.add(cid)
            info = self._checkpoints.get(cid)
            if info is None:
                cid = self._removed_parents.get(cid)
                continue
            if info.finite and info.step <= self.step and (self.ckpt_dir / cid / "state.json").exists():
                return cid
            cid = info.parent
        return None

    def _after_step(self) -> None:
        every = self.config.checkpoint_every
        if every and self.step % every == 0:
            self._checkpoint("periodic")
        every = self.config.eval_every
        if every and self.task.has_eval and self.step % every == 0:
            self._run_eval()
        every = self.config.publish_every
        if every and self.step % every == 0:
            self._try_publish("periodic")
        self._report()

    def _finish(self) -> None:
        """Final checkpoint and status: the run can be resumed from here."""
        if self._checkpointed_at != (self.branch, self.step):  # not twice at one step
            self._checkpoint("final")
        if self.config.publish_every and self._published_at != (self.branch, self.step):
            self._try_publish("final")
        if self.publisher is not None:
            self.publisher.flush(timeout=60)  # every version reaches the controller before "stopped"
        # Commands still in the inbox (an at_step that never came) are failed by the
        # controller once it hears "stopped".
        self.ended = "stopped"
        self._report(force=True, message=self.stopping)
        self.reporter.sync()

    # -- reporting ---------------------------------------------------------------------
    def status(self, message: str | None = None) -> dict[str, Any]:
        status = self.ended or (
            "stopping" if self.stopping else ("paused" if self.paused else ("waiting" if self.waiting_for_data else "running"))
        )
        if message is None and not self.ended:
            message = self.status_message
        return {
            "status": status,
            "step": self.step,
            "branch": self.branch,
            "samples_per_s": round(self._throughput, 3),
            "samples_seen": self.samples_seen,
            "last_checkpoint": self.last_checkpoint,
            "message": message,
            "time": time.time(),
        }

    def _report(self, force: bool = False, message: str | None = None) -> None:
        now = time.monotonic()
        if not force and now - self._last_report < self.config.metrics_interval_s:
            return
        self._last_report = now
        if self._first_use and self._pending_rows:  # on the newest step of this report
            lat = np.concatenate(self._first_use)
            self._first_use = []
            row = self._pending_rows[-1][2]
            row["data/first_use_p50_s"], row["data/first_use_p95_s"] = np.percentile(lat, [50, 95]).tolist()
            row["data/first_used_rows"] = len(lat)
        rows, self._pending_rows = self._pending_rows, []
        self.reporter.progress(self.branch, self.status(message), _rows_to_floats(rows))

    def snapshot(self) -> dict[str, Any]:
        """What the controller needs to validate commands and UIs need to show settings."""
        return {
            "groups": describe_optimizer(self.optimizer),
            "modules": self._modules(),
            "trainable": sum(p.numel() for p in self._params),
            "has_eval": self.task.has_eval,
            "step": self.step,
            "branch": self.branch,
            "schedule": self.schedule.to_dict(),
            "grad_clip": self.grad_clip,
            "grad_accumulation": self.grad_accumulation,
            "paused": self.paused,
            "mixture": dict(self.feed.position["weights"]),  # what batches are drawn with now
        }

    def _modules(self) -> dict[str, Any]:
        """``describe_modules`` of the model, cached: only update_module and loads change it."""
        if self._modules_view is None:
            self._modules_view = describe_modules(self.model)
        return self._modules_view

    # -- commands ----------------------------------------------------------------------
    def deliver(self, records: list[CommandRecord]) -> None:
        """Called from the control thread: queue accepted commands."""
        self.inbox.put(records)

    def _apply_due_commands(self) -> None:
        done = []
        while due := self.inbox.due(self.step):  # again after a load: it moves the step
            done.extend(self._apply(due))
        if not done:
            return
        self.reporter.outcomes(done, self.snapshot(), self.status())
        self._report(force=True)  # status may have changed (paused, new branch, ...)

    def _apply(self, due: list[CommandRecord]) -> list[CommandRecord]:
        done = []
        for record in due:
            assert record.command is not None
            step, branch = self.step, self.branch  # where it was applied (a load moves both)
            try:
                at = record.command.at_step
                if at is not None and at < self.step:  # the controller's view of the step lags
                    raise ValueError(f"at_step {at} had passed when it arrived (the run was at step {self.step})")
                message = self._handlers[type(record.command)](record.command)
                record = record.model_copy(update={"status": CommandStatus.APPLIED, "message": message})
            except Exception as e:  # a command must never take the run down
                log.warning("command %s failed: %s", record.seq, e)
                record = record.model_copy(update={"status": CommandStatus.FAILED, "message": str(e)[:2000]})
            done.append(
                record.model_copy(update={"applied_at": time.time(), "applied_step": step, "branch": branch})
            )
            done.extend(self._cancelled)
            self._cancelled = []
        return done

    def _current_lrs(self) -> list[float]:
        return [schedules.lr_at(self.schedule, g, self.step) for g in range(len(self.optimizer.param_groups))]

    def _sync_lrs(self) -> None:
        """Write the schedule's lr for the next step into the param groups (also what the
        snapshot shows)."""
        for group, lr in zip(self.optimizer.param_groups, self._current_lrs()):
            group["lr"] = lr

    def _update_optimizer(self, cmd: UpdateOptimizer) -> str:
        targets, values = validate_update(describe_optimizer(self.optimizer), cmd.params, cmd.group)
        if "lr" in values:
            self.schedule = schedules.rescale(self.schedule, self.step, {t: values["lr"] for t in targets})
            self._sync_lrs()
        apply_update(self.optimizer, targets, values)
        names = ", ".join(group_name(self.optimizer.param_groups[t], t) for t in targets)
        return f"set {', '.join(f'{k}={v}' for k, v in values.items())} on {names}"

    def _set_lr_schedule(self, cmd: SetLRSchedule) -> str:
        self.schedule = schedules.start(
            cmd.schedule, self.step, self._current_lrs(), cmd.steps, cmd.min_lr_ratio, cmd.gamma, cmd.warmup_steps
        )
        self._sync_lrs()
        return f"{cmd.schedule} schedule from step {self.step}"

    def _set_grad_clip(self, cmd: SetGradClip) -> str:
        self.grad_clip = cmd.max_norm
        return "gradient clipping off" if cmd.max_norm is None else f"clip grad norm at {cmd.max_norm:g}"

    def _set_grad_accumulation(self, cmd: SetGradAccumulation) -> str:
        self.grad_accumulation = cmd.steps
        return f"{cmd.steps} micro-batches per step"

    def _pause(self, cmd: Pause) -> str:
        was, self.paused = self.paused, True
        return "already paused" if was else "paused"

    def _resume(self, cmd: Resume) -> str:
        was, self.paused = self.paused, False
        if was:
            self.status_message = None  # a health pause's message, say: the person has seen it
        return "resumed" if was else "was not paused"

    def _cancel(self, cmd: Cancel) -> str:
        assert cmd.seq is not None  # the controller names the target by number
        target = self.inbox.remove(cmd.seq)
        if target is None:
            raise ValueError(f"#{cmd.seq} is no longer pending: it was applied or cancelled first")
        message = f"cancelled at step {self.step} by command {cmd.id}"
        self._cancelled.append(
            target.model_copy(update={"status": CommandStatus.CANCELLED, "message": message, "applied_at": time.time()})
        )
        return f"cancelled #{cmd.seq} {target.kind}"

    def _stop(self, cmd: Stop) -> str:
        self.stopping = "stop command"
        return "stopping: final checkpoint follows"

    def _save_checkpoint(self, cmd: SaveCheckpoint) -> str:
        return f"saved {self._checkpoint('command', cmd.tag)}"

    def _evaluate(self, cmd: Evaluate) -> str:
        if not self.task.has_eval:
            raise ValueError("this task has no evaluation")
        metrics = self._run_eval(flag=False)
        text = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        return f"{text} (NOT FINITE: {', '.join(bad)})" if bad else text

    def _set_data_mixture(self, cmd: SetDataMixture) -> str:
        self.feed.reset(self.feed.position, cmd.weights)
        return f"mixture {cmd.weights}"

    def _update_module(self, cmd: UpdateModule) -> str:
        validate_module_op(self._modules(), cmd)
        message = apply_module_op(self.model, self.optimizer, cmd)
        self._params = self._trainable()
        self._modules_view = None
        return message

    def _load_checkpoint(self, cmd: LoadCheckpoint) -> str:
        # Only a checkpoint of this run's tree, looked up by id: the id is never a path.
        info = self._checkpoints.get(cmd.checkpoint_id)
        if info is None or not (self.ckpt_dir / info.id / "state.json").exists():
            raise ValueError(f"no checkpoint {cmd.checkpoint_id!r} in this run (it may have been removed)")
        path = self.ckpt_dir / info.id
        self._report(force=True)  # rows not yet sent belong to the branch being left
        parent = self.branch
        position = self._load_or_roll_back(path)
        self.branch = cmd.branch or f"{parent}-{self.step}"
        self._branch_points.add(info.id)
        self.feed.reset(position)
        self.reporter.branch(self.branch, parent, cmd.checkpoint_id, self.step)
        message = f"loaded {cmd.checkpoint_id} (step {self.step}) as branch {self.branch}"
        if self.publisher is not None and (self.config.publish_every or self._published_at is not None):
            # the run publishes weights: a deployed model following it moves to the branch
            version = self._try_publish("load_checkpoint")
            message += f"; published weights version {version}" if version else "; publishing its weights failed"
        return message

    # -- publishing weights ------------------------------------------------------------
    def _publish_weights(self, cmd: PublishWeights) -> str:
        if self.publisher is None:
            raise ValueError("this trainer has no weight publisher")
        version = self._publish("command")
        return f"published weights version {version} at step {self.step}"

    def _try_publish(self, reason: str) -> int | None:
        """:meth:`_publish`, logging instead of raising: publishing never stops training."""
        if self.publisher is None:
            return None
        try:
            return self._publish(reason)
        except Exception as e:
            log.exception("publishing weights (%s) failed at step %d", reason, self.step)
            self.reporter.event("publish_weights", f"{reason} publish failed: {e}"[:2000], self.step, self.branch, failed=True)
            return None

    def _publish(self, reason: str) -> int:
        """Take one CPU copy of the weights and hand it to the publisher (which puts it in
        the object store off the step loop); return the version number."""
        assert self.publisher is not None
        t0, now = time.perf_counter(), time.time()
        bad = nonfinite_tensors(self.model.state_dict().items())
        if bad:
            raise ValueError(
                f"not published: the weights are not finite ({len(bad)} tensor(s) hold NaN or inf, e.g. {bad[0]!r})"
            )
        packed = pack_state(self.model)
        version = self._next_weight_version
        meta = {
            "version": version,
            "step": self.step,
            "branch": self.branch,
            "time": now,
            "reason": reason,
            "num_params": packed.num_params,
            "nbytes": packed.nbytes,
        }
        meta["hold_s"] = time.perf_counter() - t0  # the copy (the publisher adds any wait for room)
        self.publisher.publish(meta, packed)
        self._next_weight_version += 1
        self._published_at = (self.branch, self.step)
        return version

    # -- checkpoints and evaluation ----------------------------------------------------
    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _checkpoint(self, reason: str, tag: str | None = None) -> str:
        info = CheckpointInfo(
            id=checkpoint_id(self.ckpt_dir, self.branch, self.step),
            branch=self.branch,
            step=self.step,
            created_at=time.time(),
            reason=reason,
            parent=self.last_checkpoint,
            tag=tag,
            finite=not nonfinite_tensors(self.model.named_parameters()),  # a rollback skips it if not
        )
        modules = self._modules()
        state = {
            "step": self.step,
            "branch": self.branch,
            "samples_seen": self.samples_seen,
            "schedule": self.schedule.to_dict(),
            "grad_clip": self.grad_clip,
            "grad_accumulation": self.grad_accumulation,
            "data_position": self.feed.position,
            "frozen": [n for n, p in self.model.named_parameters() if not p.requires_grad],
            "module_attributes": {k: v["attributes"] for k, v in modules.items() if v["attributes"]},
        }
        write_checkpoint(self.ckpt_dir, info, self.model, self.optimizer, state)
        self.last_checkpoint = info.id
        self._checkpointed_at = (self.branch, self.step)
        self._checkpoints[info.id] = info
        self.reporter.checkpoint(info)
        if reason == "periodic":
            self._prune_checkpoints()
        return info.id

    def _prune_checkpoints(self) -> None:
        """Retention: keep the newest ``checkpoint_keep`` periodic checkpoints of this
        branch; tagged, saved-by-command, final and branch-point ones, the ones pending
        loads name and the rollback target always stay."""
        keep = self.config.checkpoint_keep
        if keep is None:
            return
        periodic = sorted(
            (c for c in self._checkpoints.values() if c.branch == self.branch and c.reason == "periodic" and c.tag is None),
            key=lambda c: (c.step, c.created_at),
        )
        protected = self._branch_points | self.inbox.pending_loads() | {self.last_checkpoint, self._rollback_target()}
        removed = [c.id for c in periodic[:-keep] if c.id not in protected]
        for cid in removed:
            shutil.rmtree(self.ckpt_dir / cid, ignore_errors=True)
            # its parent link stays: later checkpoints' lineage still leads through it
            self._removed_parents[cid] = self._checkpoints.pop(cid).parent
        if removed:
            self.reporter.checkpoints_removed(removed)

    def _load_or_roll_back(self, path: Path) -> dict[str, Any]:
        """:meth:`_load`, but a checkpoint that fails half way leaves the run as it was."""
        backup = (
            {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            copy.deepcopy(self.optimizer.state_dict()),
            {k: getattr(self, k) for k in ("step", "branch", "samples_seen", "schedule", "grad_clip", "grad_accumulation", "last_checkpoint")},
            [p.requires_grad for p in self.model.parameters()],
            {path: dict(v["attributes"]) for path, v in self._modules().items() if v["attributes"]},
            capture_rng(),
        )
        try:
            return self._load(path)
        except Exception:
            weights, opt_state, fields, grads, attributes, rng = backup
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(opt_state)
            for k, v in fields.items():
                setattr(self, k, v)
            for p, g in zip(self.model.parameters(), grads):
                p.requires_grad_(g)
            for mod_path, attrs in attributes.items():
                for attr, value in attrs.items():
                    setattr(self.model.get_submodule(mod_path), attr, value)
            restore_rng(*rng)
            self._params, self._modules_view = self._trainable(), None
            raise

    def _load(self, path: Path) -> dict[str, Any]:
        """Restore everything from a checkpoint directory; return its data position."""
        state = read_checkpoint(path, self.model, self.optimizer, self.device)
        self.step = state["step"]
        self.branch = state["branch"]
        self.samples_seen = state["samples_seen"]
        self.schedule = schedules.Schedule.from_dict(state["schedule"])
        self.grad_clip = state["grad_clip"]
        self.grad_accumulation = state["grad_accumulation"]
        frozen = set(state["frozen"])
        for name, p in self.model.named_parameters():
            p.requires_grad_(name not in frozen)
        for mod_path, attrs in state["module_attributes"].items():
            module = self.model.get_submodule(mod_path)
            for attr, value in attrs.items():
                setattr(module, attr, value)
        self._params = self._trainable()
        self._modules_view = None
        self.last_checkpoint = path.name
        return state["data_position"]

    def _run_eval(self, flag: bool = True) -> dict[str, float]:
        """Evaluate and log ``eval/*``; a non-finite result is flagged (a metric, and with
        ``flag`` an entry in the history: an evaluate command says so in its own outcome)."""
        self.model.eval()
        try:
            with torch.no_grad():
                metrics = {f"eval/{k}": float(v) for k, v in self.task.evaluate(self.model, self.device).items()}
        finally:
            self.model.train()
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        self._pending_rows.append((self.step, time.time(), {**metrics, "health/eval_non_finite": float(len(bad))}))
        if bad:
            message = "evaluation returned non-finite " + ", ".join(f"{k}={v}" for k, v in bad.items())
            log.warning("%s at step %d", message, self.step)
            if flag:
                self.reporter.event("evaluate", message, self.step, self.branch, failed=True)
        self._report(force=True)
        return metrics


def _finite(loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
    """Whether a step's loss and gradient norm are finite: two scalar reads on the CPU, one
    host sync on an accelerator (NaN and inf survive the float64 sum; finite values can't
    overflow it)."""
    if loss.device.type == "cpu" and grad_norm.device.type == "cpu":
        return math.isfinite(loss.item()) and math.isfinite(grad_norm.item())
    return bool(torch.isfinite(loss.double() + grad_norm.to(loss.device).double()))


def _branch_points(run_dir: Path) -> set[str]:
    """The checkpoints the run's branches were forked from (``branches.json``)."""
    try:
        branches = json.loads((run_dir / "branches.json").read_text())
    except (OSError, ValueError):
        return set()
    return {b["checkpoint"] for b in branches.values() if isinstance(b, dict) and b.get("checkpoint")}


def _rows_to_floats(rows: list[tuple[int, float, dict[str, Any]]]) -> list[tuple[int, float, dict[str, float]]]:
    """Metric rows with plain floats. All tensors are moved in one go: on a GPU each
    ``.item()`` is a sync, and there are a few per step."""
    by_device: dict[torch.device, list[torch.Tensor]] = collections.defaultdict(list)
    for _, _, r in rows:
        for v in r.values():
            if isinstance(v, torch.Tensor):
                by_device[v.device].append(v)
    values = {
        dev: iter(torch.stack([t.detach().float().reshape(()) for t in ts]).tolist()) for dev, ts in by_device.items()
    }
    out = []
    for step, t, r in rows:
        clean: dict[str, float] = {}
        for k, v in r.items():
            if isinstance(v, torch.Tensor):
                clean[k] = next(values[v.device])
            else:
                try:
                    clean[k] = float(v)
                except (TypeError, ValueError):
                    clean[k] = math.nan
        out.append((step, t, clean))
    return out
