"""The steering core: what every command does to a training run, in one place, with no Ray.

Every front-end - our Trainer actor (:mod:`ray_interactive.train.trainer`), Hugging Face's
``Trainer`` (:mod:`ray_interactive.train.hf`), a plain PyTorch loop (:mod:`ray_interactive.train.loop`)
- owns a :class:`Steering` and calls it at its control point, the optimizer step:

* :meth:`Steering.poll` applies the commands due at this step (the inbox is filled by
  another thread); :meth:`Steering.hold` waits, still applying commands, while paused;
* :meth:`Steering.begin_step` writes the lr of the step into the param groups;
  :meth:`Steering.clip` clips by the run's ``grad_clip``; :meth:`Steering.record_step`
  counts the step and its metrics; :meth:`Steering.after_step` runs the periodic work
  (checkpoints, evaluation, weight versions) and reports;
* :meth:`Steering.finish` / :meth:`Steering.fail` end the run.

The effect of each command kind is one method here (``EFFECTS`` maps kinds to them), on
the train state (:class:`~ray_interactive.core.state.TrainState`), the model, the optimizer and
the front-end's data (:class:`DataControl`). A front-end that cannot do a kind names it
in ``unsupported`` with the reason, and the controller rejects it at submission.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from ray_interactive.core.checkpoints import (
    CheckpointInfo,
    capture_rng,
    checkpoint_id,
    list_checkpoints,
    read_checkpoint,
    restore_rng,
    write_checkpoint,
)
from ray_interactive.core.commands import (
    Cancel,
    Command,
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
from ray_interactive.core.config import RunConfig
from ray_interactive.core.health import HealthGuard, Verdict, describe_values, nonfinite_tensors
from ray_interactive.core.hparams import apply_update, describe_optimizer, group_name, validate_update
from ray_interactive.core.inbox import CommandInbox
from ray_interactive.core.messages import RunEvent, Snapshot, TrainerStatus
from ray_interactive.core.module_health import ModuleHealth
from ray_interactive.core.modules import apply_module_op, describe_modules, validate_module_op
from ray_interactive.core.state import RunStatus, TrainState
from ray_interactive.serve.weights import Publisher, pack_state

log = logging.getLogger(__name__)

Row = tuple[int, float, dict[str, Any]]


class Reporter:
    """Sends run events to the controller without waiting for an answer.

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
        event = RunEvent(kind=kind, message=message, step=step, branch=branch, time=time.time(), failed=failed,
                         submit=submit or [])
        self._events.append(("event", (event.model_dump(mode="json"),)))

    def sync(self) -> None:
        """Wait until the recent events have reached the controller (at the end of a run)."""
        if self._wait is not None:
            self._wait([r for r in self._recent if r is not None])
        self._recent.clear()


class DataControl(Protocol):
    """The data a front-end trains on, as far as commands reach it (our buffer's feeds)."""

    position: dict[str, Any]

    def reset(self, position: dict[str, Any], weights: dict[str, float] | None = None) -> None: ...


@dataclass
class Frontend:
    """What a front-end brings to the core besides model and optimizer."""

    name: str  # "trainer", "hf", "loop"
    evaluate: Callable[[], dict[str, float]] | None = None  # runs an evaluation; None: evaluate is refused
    data: DataControl | None = None  # None: the front-end reads its own data
    unsupported: dict[str, str] = field(default_factory=dict)  # command kind -> why it cannot apply here
    samples_per_batch: int = 1  # for samples/s (a batch's rows)
    writes_checkpoints: bool = True  # False: a rank other than 0 (it takes part, rank 0 writes)
    timed_checkpoints: bool = True  # False: the interval is kept by someone else (rank 0 of many)


#: The effect of each command kind: one method of :class:`Steering`, registered by ``@effect``.
EFFECTS: dict[type, Callable[[Any, Any], str]] = {}
#: Kinds that only change how the optimizer steps (lr, its settings): also applied just
#: before an optimizer step, so the very step being computed uses them.
BEFORE_STEP: set[str] = set()
_Effect = TypeVar("_Effect", bound=Callable[..., str])


def effect(kind: type, before_step: bool = False) -> Callable[[_Effect], _Effect]:
    """Register a :class:`Steering` method as what commands of ``kind`` do; ``before_step``:
    it touches nothing the step's gradients depend on (see :meth:`Steering.poll_before_step`)."""

    def register(method: _Effect) -> _Effect:
        assert kind not in EFFECTS, f"{kind.__name__} has two effects"
        EFFECTS[kind] = method
        if before_step:
            BEFORE_STEP.add(kind.model_fields["kind"].default)
        return method

    return register


class Steering:
    """The train state, the commands' effects on it, checkpoints and reporting."""

    def __init__(
        self,
        config: RunConfig,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        state: TrainState,
        reporter: Reporter,
        frontend: Frontend,
        *,
        next_seq: int = 1,
        publisher: Publisher | None = None,
        next_weight_version: int = 1,
        device: torch.device | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.optimizer = optimizer
        self.state = state
        self.reporter = reporter
        self.frontend = frontend
        self.device = device or torch.device("cpu")
        self.run_dir = config.resolved_run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.inbox = CommandInbox(next_seq)
        self.guard = HealthGuard(config.health)
        self.diagnostics = (ModuleHealth(model, config.diagnostics_every, config.diagnostics_groups)
                            if config.diagnostics_every else None)
        self.publisher = publisher  # None: weights are not published (in-process use)
        self._next_weight_version = next_weight_version
        self._published_at: tuple[str, int] | None = None  # (branch, step) of the last version
        self._checkpointed_at: tuple[str, int] | None = None
        self._checkpoint_clock = time.monotonic()  # when the last checkpoint was written (or the run began)
        self.params = self.trainable()
        self.pending_rows: list[Row] = []
        self.unsettled_rows = 0  # how many of the newest pending rows a report must hold back
        self.on_report: list[Callable[[], None]] = []  # front-end additions to a report's newest row
        self._last_report = 0.0
        self.throughput = 0.0
        self._modules_view: dict[str, Any] | None = None  # describe_modules(), cached
        self._cancelled: list[CommandRecord] = []  # withdrawn by the cancel being applied
        self.on_checkpoint: list[Callable[[], None]] = []  # after each checkpoint is taken
        self.before_load: list[Callable[[], None]] = []  # front-ends settle the branch being left
        self.after_load: list[Callable[[dict[str, Any] | None], None]] = []  # ... and follow a load
        # The run's checkpoints (id -> info), kept as they are written and removed, and the
        # ones branches were forked from (never removed by the retention policy).
        self.checkpoints: dict[str, CheckpointInfo] = {c.id: c for c in list_checkpoints(self.ckpt_dir)}
        self._removed_parents: dict[str, str | None] = {}  # removed by retention -> their parent
        self._branch_points: set[str] = _branch_points(self.run_dir)

    # -- the control point -------------------------------------------------------------
    def start(self) -> None:
        """Describe the run to the controller; publish the first weights if asked to."""
        self.reporter.snapshot(self.snapshot())
        self.report(force=True)
        self._arm_diagnostics()
        if self.config.publish_every:  # a deployed model following the run gets weights at once
            self.try_publish("start")

    def poll(self) -> None:
        """Apply the commands due at this step (cheap when there are none)."""
        if self.inbox.has_due(self.state.step):
            self.apply_due_commands()

    def poll_before_step(self) -> None:
        """Just before the optimizer step: apply the due lr and optimizer-setting commands
        (``BEFORE_STEP``), in order, up to the first due command of another kind. The step
        whose gradients are ready then uses them: a command is used by the next optimizer
        step even if it arrived during that step's forward and backward. (The step counter
        has not moved yet, so a replay pins them to the same step: same result.)"""
        if self.inbox.has_due(self.state.step):
            self.apply_due_commands(only=_before_step)

    def hold(self) -> None:
        """While paused (and not stopping): wait for commands, apply them, keep reporting."""
        while self.state.paused and not self.state.stopping:
            self.inbox.wait(0.2)
            self.poll()
            self.report()

    def begin_step(self) -> None:
        """Set the step's lr in the param groups (our own schedules; a front-end's own
        scheduler does it itself)."""
        self.state.schedule.apply(self.state.step)

    def clip(self) -> torch.Tensor:
        """The gradient norm, clipped by the run's ``grad_clip`` when set."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return torch.zeros(())
        norm = torch.nn.utils.get_total_norm(grads)
        if self.state.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.state.grad_clip, norm)
        self.grads_ready()
        return norm

    def grads_ready(self) -> None:
        """The step's final gradients are in place (front-ends that clip by themselves call it)."""
        if self.diagnostics is not None:
            self.diagnostics.grads_ready()

    def _arm_diagnostics(self) -> None:
        if self.diagnostics is not None:
            self.diagnostics.arm_for(self.state.step + 1)

    def _rearm_diagnostics(self) -> None:
        """Drop a sample in progress and arm again for the next step."""
        if self.diagnostics is not None:
            self.diagnostics.disarm()
            self._arm_diagnostics()

    def record_step(self, samples: int, started: float, **values: Any) -> dict[str, Any]:
        """Count a finished optimizer step and queue its metric row (returned: the front-end
        may add to it). ``values`` are tensors or numbers (read in bulk at report time)."""
        s = self.state
        s.step += 1
        s.samples_seen += samples
        self.guard.good_step()
        dt = max(time.perf_counter() - started, 1e-9)
        self.throughput = samples / dt if self.throughput == 0 else 0.9 * self.throughput + 0.1 * samples / dt
        row: dict[str, Any] = {
            "lr": self.optimizer.param_groups[0]["lr"],
            **values,
            "step_time_s": dt,
            "samples_per_s": samples / dt,
        }
        if self.diagnostics is not None and self.diagnostics.armed:
            row.update(self.diagnostics.collect())
        self.pending_rows.append((s.step, time.time(), row))
        return row

    def after_step(self) -> None:
        """Periodic checkpoint, evaluation and weight version; a report when one is due."""
        step, cfg = self.state.step, self.config
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or (
            self.frontend.timed_checkpoints and self.checkpoint_due_by_time()
        ):
            self.try_checkpoint("periodic")
        if cfg.eval_every and self.frontend.evaluate is not None and step % cfg.eval_every == 0:
            self.run_eval()
        if cfg.publish_every and step % cfg.publish_every == 0:
            self.try_publish("periodic")
        self.report()
        self._arm_diagnostics()  # after evaluation: only the next training step's forward is sampled

    def checkpoint_due_by_time(self) -> bool:
        interval = self.config.checkpoint_interval_s
        return bool(interval) and time.monotonic() - self._checkpoint_clock >= interval  # type: ignore[operator]

    def reached_max_steps(self) -> bool:
        if self.config.max_steps is not None and self.state.step >= self.config.max_steps:
            self.state.stopping = self.state.stopping or f"reached max_steps={self.config.max_steps}"
            return True
        return False

    def finish(self) -> dict[str, Any]:
        """Final checkpoint and status: the run can be resumed from here."""
        s = self.state
        if self._checkpointed_at != (s.branch, s.step):  # not twice at one step
            self.try_checkpoint("final")
        if self.config.publish_every and self._published_at != (s.branch, s.step):
            self.try_publish("final")
        if self.publisher is not None:
            self.publisher.flush(timeout=60)  # every version reaches the controller before "stopped"
        # Commands still in the inbox (an at_step that never came) are failed by the
        # controller once it hears "stopped".
        s.ended = RunStatus.STOPPED
        self.report(force=True, message=s.stopping)
        self.reporter.sync()
        return self.status()

    def end(self, reason: str) -> dict[str, Any]:
        """:meth:`finish` for a front-end whose loop ended (``reason``, unless a stop or
        max_steps said why first); the final status if the run had already ended."""
        if self.state.ended is not None:
            return self.status()
        self.state.stopping = self.state.stopping or reason
        return self.finish()

    def fail(self, error: BaseException) -> None:
        """The loop raised: status ``failed``, with the error's traceback as the message."""
        self.state.stopping = f"failed: {type(error).__name__}: {error}"
        self.state.ended = RunStatus.FAILED
        self.report(force=True, message="".join(traceback.format_exception(error, limit=8)))
        self.reporter.sync()

    # -- health ------------------------------------------------------------------------
    def non_finite_step(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """The step's loss or gradient norm was not finite (its gradients are dropped):
        react by the run's policy and leave a trace in the status, metrics and history."""
        s = self.state
        what = describe_values(loss=float(loss), grad_norm=float(grad_norm))
        weights_ok = not nonfinite_tensors(self.model.named_parameters())
        target = self.rollback_target() if self.config.health.on_non_finite == "rollback" else None
        verdict = self.guard.non_finite(what, s.step + 1, weights_ok, target)
        log.warning("%s", verdict.message)
        self.pending_rows.append((s.step, time.time(), {"health/skipped_steps": self.guard.skipped_total}))
        self._rearm_diagnostics()  # sample the step that is tried next instead
        if verdict.action == "skip":
            s.message = verdict.message
            if self.guard.in_a_row == 1:  # one history entry per streak, not one per step
                self.reporter.event("skip_step", verdict.message, s.step, s.branch)
            self.report()
            return
        s.paused = True
        s.message = verdict.message
        if verdict.action == "pause":
            self.reporter.event("pause", verdict.message, s.step, s.branch)
        else:
            self.reporter.event("rollback", verdict.message, s.step, s.branch, submit=self._rollback_commands(verdict))
        self.report(force=True)

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

    def rollback_target(self) -> str | None:
        """The newest checkpoint of this lineage with finite weights that is still on disk."""
        cid, seen = self.state.last_checkpoint, set()
        while cid is not None and cid not in seen:
            seen.add(cid)
            info = self.checkpoints.get(cid)
            if info is None:
                cid = self._removed_parents.get(cid)
                continue
            if info.finite and info.step <= self.state.step and (self.ckpt_dir / cid / "state.json").exists():
                return cid
            cid = info.parent
        return None

    # -- reporting ---------------------------------------------------------------------
    def status(self, message: str | None = None) -> dict[str, Any]:
        s = self.state
        if message is None and s.ended is None:
            message = s.message
        return TrainerStatus(
            status=s.status,
            step=s.step,
            branch=s.branch,
            samples_per_s=round(self.throughput, 3),
            samples_seen=s.samples_seen,
            last_checkpoint=s.last_checkpoint,
            message=message,
            time=time.time(),
            frontend=self.frontend.name,
        ).model_dump(mode="json")

    def report(self, force: bool = False, message: str | None = None) -> None:
        now = time.monotonic()
        if not force and now - self._last_report < self.config.metrics_interval_s:
            return
        self._last_report = now
        for add in self.on_report:
            add()
        cut = len(self.pending_rows) - self.unsettled_rows  # the newest may still wait for a value
        rows, self.pending_rows = self.pending_rows[:cut], self.pending_rows[cut:]
        self.reporter.progress(self.state.branch, self.status(message), rows_to_floats(rows))

    def snapshot(self) -> dict[str, Any]:
        """What the controller needs to validate commands and UIs need to show settings."""
        s = self.state
        data = self.frontend.data
        return Snapshot(
            groups=describe_optimizer(self.optimizer),
            modules=self.modules(),
            trainable=sum(p.numel() for p in self.params),
            has_eval=self.frontend.evaluate is not None,
            step=s.step,
            branch=s.branch,
            schedule=s.schedule.to_dict(),
            grad_clip=s.grad_clip,
            grad_accumulation=s.grad_accumulation,
            paused=s.paused,
            mixture=dict(data.position["weights"]) if data is not None else {},  # what batches are drawn with now
            frontend=self.frontend.name,
            unsupported=dict(self.frontend.unsupported),
        ).model_dump(mode="json")

    def modules(self) -> dict[str, Any]:
        """``describe_modules`` of the model, cached: only update_module and loads change it."""
        if self._modules_view is None:
            self._modules_view = describe_modules(self.model)
        return self._modules_view

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # -- commands ----------------------------------------------------------------------
    def deliver(self, records: list[CommandRecord]) -> None:
        """Called from any thread: queue accepted commands."""
        self.inbox.put(records)

    def apply_due_commands(self, only: Callable[[CommandRecord], bool] | None = None) -> None:
        """Apply the due commands (``only``: just the leading ones it accepts) and report
        their outcomes; between steps, a progress report follows at once."""
        done = []
        while due := self.inbox.due(self.state.step, only=only):  # again after a load: it moves the step
            done.extend(self._apply(due))
        if not done:
            return
        self.reporter.outcomes(done, self.snapshot(), self.status())
        if only is None:
            self.report(force=True)  # status may have changed (paused, new branch, ...)

    def _apply(self, due: list[CommandRecord]) -> list[CommandRecord]:
        done = []
        for record in due:
            assert record.command is not None
            step, branch = self.state.step, self.state.branch  # where it was applied (a load moves both)
            try:
                message = self.apply(record.command)
                record = record.model_copy(update={"status": CommandStatus.APPLIED, "message": message})
            except Exception as e:  # a command must never take the run down
                log.warning("command %s failed: %s", record.seq, e)
                record = record.model_copy(update={"status": CommandStatus.FAILED, "message": str(e)[:2000]})
            done.append(record.model_copy(update={"applied_at": time.time(), "applied_step": step, "branch": branch}))
            done.extend(self._cancelled)
            self._cancelled = []
        return done

    def apply(self, cmd: Command) -> str:
        """Apply one command now; returns what it did (raises ``ValueError`` if it cannot)."""
        at = cmd.at_step
        if at is not None and at < self.state.step:  # the controller's view of the step lags
            raise ValueError(f"at_step {at} had passed when it arrived (the run was at step {self.state.step})")
        why = self.frontend.unsupported.get(cmd.kind)
        if why is not None:
            raise ValueError(why)
        return EFFECTS[type(cmd)](self, cmd)

    # -- the effect of each command kind -----------------------------------------------
    @effect(UpdateOptimizer, before_step=True)
    def _update_optimizer(self, cmd: UpdateOptimizer) -> str:
        targets, values = validate_update(describe_optimizer(self.optimizer), cmd.params, cmd.group)
        if "lr" in values:
            self.state.schedule.set_lrs(self.state.step, {t: values["lr"] for t in targets})
        apply_update(self.optimizer, targets, values)
        names = ", ".join(group_name(self.optimizer.param_groups[t], t) for t in targets)
        return f"set {', '.join(f'{k}={v}' for k, v in values.items())} on {names}"

    @effect(SetLRSchedule, before_step=True)
    def _set_lr_schedule(self, cmd: SetLRSchedule) -> str:
        return self.state.schedule.start(
            cmd.schedule, self.state.step, cmd.steps, cmd.min_lr_ratio, cmd.gamma, cmd.warmup_steps
        )

    @effect(SetGradClip)
    def _set_grad_clip(self, cmd: SetGradClip) -> str:
        self.state.grad_clip = cmd.max_norm
        return "gradient clipping off" if cmd.max_norm is None else f"clip grad norm at {cmd.max_norm:g}"

    @effect(SetGradAccumulation)
    def _set_grad_accumulation(self, cmd: SetGradAccumulation) -> str:
        self.state.grad_accumulation = cmd.steps
        return f"{cmd.steps} micro-batches per step"

    @effect(Pause)
    def _pause(self, cmd: Pause) -> str:
        was, self.state.paused = self.state.paused, True
        return "already paused" if was else "paused"

    @effect(Resume)
    def _resume(self, cmd: Resume) -> str:
        was, self.state.paused = self.state.paused, False
        if was:
            self.state.message = None  # a health pause's message, say: the person has seen it
        return "resumed" if was else "was not paused"

    @effect(Cancel)
    def _cancel(self, cmd: Cancel) -> str:
        assert cmd.seq is not None  # the controller names the target by number
        target = self.inbox.remove(cmd.seq)
        if target is None:
            raise ValueError(f"#{cmd.seq} is no longer pending: it was applied or cancelled first")
        message = f"cancelled at step {self.state.step} by command {cmd.id}"
        self._cancelled.append(
            target.model_copy(update={"status": CommandStatus.CANCELLED, "message": message, "applied_at": time.time()})
        )
        return f"cancelled #{cmd.seq} {target.kind}"

    @effect(Stop)
    def _stop(self, cmd: Stop) -> str:
        self.state.stopping = "stop command"
        return "stopping: final checkpoint follows"

    @effect(SaveCheckpoint)
    def _save_checkpoint(self, cmd: SaveCheckpoint) -> str:
        return f"saved {self.checkpoint('command', cmd.tag)}"

    @effect(Evaluate)
    def _evaluate(self, cmd: Evaluate) -> str:
        metrics = self.run_eval(flag=False)
        text = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        return f"{text} (NOT FINITE: {', '.join(bad)})" if bad else text

    @effect(SetDataMixture)
    def _set_data_mixture(self, cmd: SetDataMixture) -> str:
        data = self.frontend.data
        assert data is not None  # refused at submission otherwise (unsupported)
        data.reset(data.position, cmd.weights)
        return f"mixture {cmd.weights}"

    @effect(UpdateModule)
    def _update_module(self, cmd: UpdateModule) -> str:
        validate_module_op(self.modules(), cmd)
        message = apply_module_op(self.model, self.optimizer, cmd)
        self.params, self._modules_view = self.trainable(), None
        return message

    @effect(LoadCheckpoint)
    def _load_checkpoint(self, cmd: LoadCheckpoint) -> str:
        # Only a checkpoint of this run's tree, looked up by id: the id is never a path.
        info = self.checkpoints.get(cmd.checkpoint_id)
        if info is None and not self.frontend.writes_checkpoints:  # rank 0 wrote it: read its info
            info = next((c for c in list_checkpoints(self.ckpt_dir) if c.id == cmd.checkpoint_id), None)
        if info is None or not (self.ckpt_dir / info.id / "state.json").exists():
            raise ValueError(f"no checkpoint {cmd.checkpoint_id!r} in this run (it may have been removed)")
        for settle in self.before_load:
            settle()
        self.report(force=True)  # rows not yet sent belong to the branch being left
        parent = self.state.branch
        self.load(self.ckpt_dir / info.id)
        self.state.branch = cmd.branch or f"{parent}-{self.state.step}"
        self._branch_points.add(info.id)
        self.reporter.branch(self.state.branch, parent, cmd.checkpoint_id, self.state.step)
        message = f"loaded {cmd.checkpoint_id} (step {self.state.step}) as branch {self.state.branch}"
        if self.frontend.data is None:
            message += " (the loop's own data stream goes on where it was)"
        if self.publisher is not None and (self.config.publish_every or self._published_at is not None):
            # the run publishes weights: a deployed model following it moves to the branch
            version = self.try_publish("load_checkpoint")
            message += f"; published weights version {version}" if version else "; publishing its weights failed"
        return message

    @effect(PublishWeights)
    def _publish_weights(self, cmd: PublishWeights) -> str:
        if self.publisher is None:
            raise ValueError("this run has no weight publisher")
        version = self.publish("command")
        return f"published weights version {version} at step {self.state.step}"

    # -- publishing weights ------------------------------------------------------------
    def try_publish(self, reason: str) -> int | None:
        """:meth:`publish`, logging instead of raising: publishing never stops training."""
        if self.publisher is None:
            return None
        try:
            return self.publish(reason)
        except Exception as e:
            log.exception("publishing weights (%s) failed at step %d", reason, self.state.step)
            self.reporter.event("publish_weights", f"{reason} publish failed: {e}"[:2000], self.state.step,
                                self.state.branch, failed=True)
            return None

    def publish(self, reason: str) -> int:
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
            "step": self.state.step,
            "branch": self.state.branch,
            "time": now,
            "reason": reason,
            "num_params": packed.num_params,
            "nbytes": packed.nbytes,
        }
        meta["hold_s"] = time.perf_counter() - t0  # the copy (the publisher adds any wait for room)
        self.publisher.publish(meta, packed)
        self._next_weight_version += 1
        self._published_at = (self.state.branch, self.state.step)
        return version

    # -- checkpoints and evaluation ----------------------------------------------------
    def checkpoint_doc(self) -> dict[str, Any]:
        """Everything a checkpoint stores besides weights, optimizer state and RNGs: the
        train state, the model's settings (frozen parameters, module attributes) and the
        data position. :meth:`restore_doc` is its inverse."""
        modules = self.modules()
        data = self.frontend.data
        return {
            **self.state.to_checkpoint(),
            "data_position": copy.deepcopy(getattr(data, "checkpoint_position", lambda: data.position)())
            if data is not None else None,
            "frozen": [n for n, p in self.model.named_parameters() if not p.requires_grad],
            "module_attributes": {k: v["attributes"] for k, v in modules.items() if v["attributes"]},
            "paused": self.state.paused,  # not restored by a load; a restarted trainer resumes in this state
        }

    def restore_doc(self, doc: dict[str, Any], reset_data: bool = True) -> None:
        self.state.from_checkpoint(doc)
        frozen = set(doc["frozen"])
        for name, p in self.model.named_parameters():
            p.requires_grad_(name not in frozen)
        for mod_path, attrs in doc["module_attributes"].items():
            module = self.model.get_submodule(mod_path)
            for attr, value in attrs.items():
                setattr(module, attr, value)
        self.params, self._modules_view = self.trainable(), None
        if reset_data and self.frontend.data is not None and doc.get("data_position") is not None:
            self.frontend.data.reset(doc["data_position"])
        for follow in self.after_load:
            follow(doc)

    def checkpoint(self, reason: str, tag: str | None = None) -> str:
        s = self.state
        info = CheckpointInfo(
            id=checkpoint_id(self.ckpt_dir, s.branch, s.step),
            branch=s.branch,
            step=s.step,
            created_at=time.time(),
            reason=reason,
            parent=s.last_checkpoint,
            tag=tag,
            finite=not nonfinite_tensors(self.model.named_parameters()),  # a rollback skips it if not
        )
        doc = self.checkpoint_doc()  # with many ranks every one takes part (their data positions)
        if self.frontend.writes_checkpoints:
            write_checkpoint(self.ckpt_dir, info, self.model, self.optimizer, doc)
        self._checkpoint_clock = time.monotonic()
        s.last_checkpoint = info.id
        self._checkpointed_at = (s.branch, s.step)
        self.checkpoints[info.id] = info
        self.reporter.checkpoint(info)
        if reason == "periodic" and self.frontend.writes_checkpoints:
            self._prune_checkpoints()
        for follow in self.on_checkpoint:
            follow()
        return info.id

    def try_checkpoint(self, reason: str) -> str | None:
        """A checkpoint the run takes on its own (periodic, final): one that cannot be
        written (a full disk, say) is an entry in the history with the reason, and
        training goes on; the next one is tried at the next interval."""
        try:
            return self.checkpoint(reason)
        except OSError as e:
            self._checkpoint_clock = time.monotonic()
            s = self.state
            message = f"{reason} checkpoint at step {s.step} not written: {type(e).__name__}: {e}"
            log.error(message)
            self.reporter.event("checkpoint_failed", message, s.step, s.branch, failed=True)
            return None

    def _prune_checkpoints(self) -> None:
        """Retention: keep the newest ``checkpoint_keep`` periodic checkpoints of this
        branch; tagged, saved-by-command, final and branch-point ones, the ones pending
        loads name and the rollback target always stay."""
        keep = self.config.checkpoint_keep
        if keep is None:
            return
        periodic = sorted(
            (c for c in self.checkpoints.values() if c.branch == self.state.branch and c.reason == "periodic" and c.tag is None),
            key=lambda c: (c.step, c.created_at),
        )
        protected = self._branch_points | self.inbox.pending_loads() | {self.state.last_checkpoint, self.rollback_target()}
        removed = [c.id for c in periodic[:-keep] if c.id not in protected]
        for cid in removed:
            shutil.rmtree(self.ckpt_dir / cid, ignore_errors=True)
            # its parent link stays: later checkpoints' lineage still leads through it
            self._removed_parents[cid] = self.checkpoints.pop(cid).parent
        if removed:
            self.reporter.checkpoints_removed(removed)

    def load(self, path: Path) -> dict[str, Any]:
        """Restore everything from a checkpoint directory and return what it held besides
        tensors; one that fails half way leaves the run as it was (the backup is the same
        state a checkpoint holds)."""
        backup = (
            {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            copy.deepcopy(self.optimizer.state_dict()),
            copy.deepcopy(self.checkpoint_doc()),
            capture_rng(),
        )
        try:
            doc = read_checkpoint(path, self.model, self.optimizer, self.device)
            self.restore_doc(doc)
            self.state.last_checkpoint = path.name
            self._rearm_diagnostics()  # the weights a sample compares against changed
            return doc
        except Exception:
            weights, opt_state, doc, rng = backup
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(opt_state)
            self.restore_doc(doc, reset_data=False)
            restore_rng(*rng)
            raise

    def run_eval(self, flag: bool = True) -> dict[str, float]:
        """Evaluate and log ``eval/*``; a non-finite result is flagged (a metric, and with
        ``flag`` an entry in the history: an evaluate command says so in its own outcome)."""
        if self.frontend.evaluate is None:
            raise ValueError("this run has no evaluation")
        s = self.state
        metrics = {k if k.startswith("eval/") else f"eval/{k}": float(v) for k, v in self.frontend.evaluate().items()}
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        self.pending_rows.append((s.step, time.time(), {**metrics, "health/eval_non_finite": float(len(bad))}))
        if bad:
            message = "evaluation returned non-finite " + ", ".join(f"{k}={v}" for k, v in bad.items())
            log.warning("%s at step %d", message, s.step)
            if flag:
                self.reporter.event("evaluate", message, s.step, s.branch, failed=True)
        self.report(force=True)
        return metrics


def evaluate_model(model: torch.nn.Module, evaluate: Callable[[], dict[str, Any]]) -> dict[str, float]:
    """``evaluate()`` with the model in eval mode and no autograd, as floats; the model's
    mode is put back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return {k: float(v) for k, v in evaluate().items()}
    finally:
        model.train(was_training)


def _before_step(record: CommandRecord) -> bool:
    return record.command is not None and record.command.kind in BEFORE_STEP


def finite(loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
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


def rows_to_floats(rows: list[Row]) -> list[tuple[int, float, dict[str, float]]]:
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

