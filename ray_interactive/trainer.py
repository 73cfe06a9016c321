"""The trainer: owns model, optimizer and schedule, and runs the step loop.

The loop reads top to bottom (:meth:`Trainer.run`): apply due commands, get the next
batch (prefetched), forward/backward over the micro-batches, clip, optimizer step,
record metrics. Everything interactive sits in small calls around that: the inbox is
filled by another thread, batches were requested steps ago, metrics leave in the
background every ``metrics_interval_s``. The step never waits for another actor.

The trainer talks to the controller through a :class:`Reporter` (fire-and-forget) and
to the data through a feed (:mod:`ray_interactive.feeds`), and publishes weights through
a publisher (:mod:`ray_interactive.weights`), so this class has no Ray in it and unit
tests drive it in-process.
"""

from __future__ import annotations

import collections
import copy
import logging
import math
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
    read_checkpoint,
    restore_rng,
    write_checkpoint,
)
from ray_interactive.commands import (
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
                if not self._train_step():
                    self.inbox.wait(0.1)  # no data yet; stay responsive to commands
                    continue
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

    def _train_step(self) -> bool:
        """One optimizer step over ``grad_accumulation`` micro-batches; False if no data."""
        t0 = time.perf_counter()
        self._sync_lrs()
        losses, extras, metas = [], {}, []
        for micro in range(self.grad_accumulation):
            batch = self.feed.next()
            while batch is None and micro > 0:  # mid-cycle: wait for data, never apply commands
                time.sleep(0.05)
                batch = self.feed.next()
            if batch is None:
                return False
            out = self.task.loss(self.model, self.task.collate(batch.table, self.device))
            loss, extra = (out if isinstance(out, tuple) else (out, {}))
            (loss / self.grad_accumulation).backward()
            losses.append(loss.detach())
            for k, v in extra.items():  # averaged over micro-batches, like the loss
                extras[k] = extras.get(k, 0.0) + v / self.grad_accumulation
            metas.append(batch.meta)
        grad_norm = self._clip_gradients()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

        samples = self.config.batch_size * self.grad_accumulation
        self.samples_seen += samples
        dt = time.perf_counter() - t0
        self._throughput = samples / dt if self._throughput == 0 else 0.9 * self._throughput + 0.1 * samples / dt
        row: dict[str, Any] = {
            "loss": torch.stack(losses).mean() if len(losses) > 1 else losses[0],
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
        status = self.ended or ("stopping" if self.stopping else ("paused" if self.paused else "running"))
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
                record = record.model_copy(update={"status": CommandStatus.FAILED, "message": str(e)})
            done.append(
                record.model_copy(update={"applied_at": time.time(), "applied_step": step, "branch": branch})
            )
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
        return "resumed" if was else "was not paused"

    def _stop(self, cmd: Stop) -> str:
        self.stopping = "stop command"
        return "stopping: final checkpoint follows"

    def _save_checkpoint(self, cmd: SaveCheckpoint) -> str:
        return f"saved {self._checkpoint('command', cmd.tag)}"

    def _evaluate(self, cmd: Evaluate) -> str:
        if not self.task.has_eval:
            raise ValueError("this task has no evaluation")
        metrics = self._run_eval()
        return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())

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
        path = self.ckpt_dir / cmd.checkpoint_id
        if not (path / "state.json").exists():
            raise ValueError(f"no checkpoint {cmd.checkpoint_id!r} in {self.ckpt_dir}")
        self._report(force=True)  # rows not yet sent belong to the branch being left
        parent = self.branch
        position = self._load_or_roll_back(path)
        self.branch = cmd.branch or f"{parent}-{self.step}"
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
        except Exception:
            log.exception("publishing weights (%s) failed at step %d", reason, self.step)
            return None

    def _publish(self, reason: str) -> int:
        """Take one CPU copy of the weights and hand it to the publisher (which puts it in
        the object store off the step loop); return the version number."""
        assert self.publisher is not None
        t0, now = time.perf_counter(), time.time()
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
        self.reporter.checkpoint(info)
        return info.id

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

    def _run_eval(self) -> dict[str, float]:
        self.model.eval()
        try:
            with torch.no_grad():
                metrics = {f"eval/{k}": float(v) for k, v in self.task.evaluate(self.model, self.device).items()}
        finally:
            self.model.train()
        self._pending_rows.append((self.step, time.time(), metrics))
        self._report(force=True)
        return metrics


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
