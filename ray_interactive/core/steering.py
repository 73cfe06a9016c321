"""The steering core: the control point every training loop calls, with no Ray.

Every front-end - our Trainer (:mod:`ray_interactive.train.trainer`, one rank or many),
Hugging Face's ``Trainer`` (:mod:`ray_interactive.train.hf`), a plain PyTorch loop
(:mod:`ray_interactive.train.loop`) - owns a :class:`Steering` and calls it at its
optimizer step:

* :meth:`Steering.poll` applies the commands due at this step (a puller thread fills
  the inbox); :meth:`Steering.hold` waits, still applying commands, while paused;
* :meth:`Steering.begin_step` writes the lr of the step into the param groups;
  :meth:`Steering.clip` clips by the run's ``grad_clip``; :meth:`Steering.record_step`
  counts the step and its metrics; :meth:`Steering.after_step` runs the periodic work
  (checkpoints, evaluation, weight versions) and reports;
* :meth:`Steering.finish` / :meth:`Steering.end` / :meth:`Steering.fail` end the run.

What a command does is its kind's own :meth:`~ray_interactive.core.commands.CommandBase.apply`
(one module per kind); the work is done by the parts a steering core is made of: the
:class:`~ray_interactive.core.checkpointer.Checkpointer`, the
:class:`~ray_interactive.core.publishing.WeightPublishing`, the
:class:`~ray_interactive.core.evaluation.Evaluator` and the
:class:`~ray_interactive.core.reporting.Telemetry`. A front-end that cannot do a kind
names it in ``unsupported`` with the reason, and the controller rejects it at submission.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ray_interactive.core.checkpointer import Checkpointer
from ray_interactive.core.commands import Command, CommandRecord, CommandStatus
from ray_interactive.core.config import RunConfig
from ray_interactive.core.evaluation import Evaluator, evaluate_model
from ray_interactive.core.health import HealthGuard, describe_values
from ray_interactive.core.hparams import describe_optimizer, group_name
from ray_interactive.core.inbox import CommandInbox
from ray_interactive.core.messages import Snapshot, TrainerStatus
from ray_interactive.core.module_health import ModuleHealth
from ray_interactive.core.modules import describe_modules
from ray_interactive.core.publishing import WeightPublishing
from ray_interactive.core.ranks import CHECKPOINT_DUE, Exchanged, RankLink
from ray_interactive.core.reporting import Reporter, Telemetry
from ray_interactive.core.state import RunStatus, TrainState
from ray_interactive.core.weights import Publisher, trainable_state_names

__all__ = ["DataControl", "Frontend", "Steering", "evaluate_model", "finite"]

log = logging.getLogger(__name__)


class DataControl(Protocol):
    """The data a front-end trains on, as far as commands reach it (our buffer's feeds)."""

    position: dict[str, Any]

    def reset(self, position: dict[str, Any], weights: dict[str, float] | None = None) -> None: ...


@dataclass
class Frontend:
    """What a front-end brings to the core besides model and optimizer."""

    name: str  # "trainer", "ddp", "hf", "loop"
    evaluate: Callable[[], dict[str, float]] | None = None  # runs an evaluation; None: evaluate is refused
    data: DataControl | None = None  # None: the front-end reads its own data
    unsupported: dict[str, str] = field(default_factory=dict)  # command kind -> why it cannot apply here
    samples_per_batch: int = 1  # for samples/s (a batch's rows)
    writes_checkpoints: bool = True  # False: a rank other than 0 (it takes part, rank 0 writes)
    timed_checkpoints: bool = True  # False: the interval is kept by someone else (rank 0 of many)


class Steering:
    """The train state and the control point; the parts do the work (see the module doc)."""

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
        # "cpu:0" (HF's device on many ranks) is a location neither torch.load nor safetensors takes
        self.device = device if device is not None and device.type != "cpu" else torch.device("cpu")
        self.inbox = CommandInbox(next_seq)
        # Many ranks (attach_ranks): rank 0's deliveries wait here for the next exchange,
        # which puts them in every rank's inbox at once.
        self.arrivals = CommandInbox(next_seq)
        self.ranks: RankLink | None = None
        self._checkpoint_due = False  # rank 0's clock, heard in the last exchange
        self._loss_sent = False  # this step's loss went into the exchange in flight
        self.guard = HealthGuard(config.health)
        self.diagnostics = (ModuleHealth(model, config.diagnostics_every, config.diagnostics_groups)
                            if config.diagnostics_every else None)
        self.telemetry = Telemetry(config, state, reporter, lambda: frontend.name)
        self.checkpoints = Checkpointer(
            config, model, optimizer, state, frontend, reporter, self.device,
            describe_modules=self.modules, changed=self.model_changed, pending_loads=self.inbox.pending_loads,
        )
        self.weights = WeightPublishing(publisher, model, state, reporter, next_version=next_weight_version,
                                        publish_every=config.publish_every)
        self.evaluator = Evaluator(frontend, state, self.telemetry, reporter)
        self.params = self.trainable()
        # saved_weights="trainable": checkpoints and weight versions hold what trains now, not the fixed base
        self.saved_names = trainable_state_names(model) if config.saved_weights == "trainable" else None
        self.checkpoints.saved_names = self.weights.saved_names = self.saved_names
        self.before_load: list[Callable[[], None]] = []  # front-ends settle the branch being left
        self._modules_view: dict[str, Any] | None = None  # describe_modules(), cached
        self._withdrawn: list[CommandRecord] = []  # cancelled by the cancel being applied
        self._describe = False  # the controller asked for a snapshot (it restarted)

    # -- the control point -------------------------------------------------------------
    def start(self) -> None:
        """Describe the run to the controller; publish the first weights if asked to."""
        self.reporter.snapshot(self.snapshot())
        self.telemetry.report(force=True)
        self._arm_diagnostics()
        if self.config.publish_every:  # a deployed model following the run gets weights at once
            self.weights.try_publish("start")

    def continue_from(self, checkpoint: Path) -> dict[str, Any]:
        """Resuming a run whose loop ended: restore everything from ``checkpoint`` (before
        :meth:`start`). The metrics logged past it were the old loop's; its steps are computed
        again. Paused if the run was paused when the checkpoint was written."""
        doc = self.checkpoints.load(checkpoint)
        self.reporter.rewind(self.state.branch, self.state.step + 1)
        self.state.paused = bool(doc.get("paused"))
        return doc

    def deliver(self, records: list[CommandRecord]) -> None:
        """Called from any thread: queue accepted commands (numbered below the ones
        already received too: held through a recovery, they come once)."""
        if self.ranks is not None:  # rank 0 of many: they reach every rank at the next exchange
            self.arrivals.put(records, replayed=True)
            return
        self.inbox.put(records, replayed=True)

    def attach_ranks(self, ranks: RankLink) -> None:
        """Make this core one rank of many: rank 0 writes checkpoints and keeps their clock;
        the commands reach every rank through :meth:`sync`."""
        self.ranks = ranks
        self.frontend.timed_checkpoints = False
        self.frontend.writes_checkpoints = ranks.rank == 0
        own = self.checkpoints.weights_finite
        self.checkpoints.weights_finite = lambda: ranks.agree(own())  # a shard each: all decide alike

    def sync(self, loss: float | torch.Tensor | None = None, pipelined: bool = False) -> None:
        """Many ranks: the control points' one collective. Rank 0's new commands go into
        every rank's inbox (so every rank applies them at the same step), and the loss is
        averaged over the ranks (it becomes the step's ``loss``; ``loss/rank0`` is rank 0's
        own). ``pipelined`` (in a step): finished at the next call - see
        :mod:`ray_interactive.core.ranks`. One rank: nothing."""
        ranks = self.ranks
        if ranks is None:
            return
        lead = ranks.rank == 0
        records = self.arrivals.drain() if lead else []
        flags = CHECKPOINT_DUE if lead and self.config.checkpoint_interval_s and self.checkpoints.due_by_time() else 0
        done = ranks.exchange(records, flags, None if loss is None else float(loss), pipelined=pipelined)
        self._loss_sent = loss is not None
        self._settle(done)

    def _settle(self, done: list[Exchanged]) -> None:
        for got in done:
            if got.records:
                self.inbox.put(got.records, replayed=True)
            self._checkpoint_due = self._checkpoint_due or bool(got.flags & CHECKPOINT_DUE)
            row = self.telemetry.awaiting
            if got.mean_loss is not None and row is not None:  # the step's row, held back until now
                row["loss/rank0"] = row.get("loss")
                row["loss"] = got.mean_loss
                self.telemetry.awaiting = None

    def describe_again(self) -> None:
        """Called from any thread: the controller lost the run's description (it was
        restarted); it is sent at the next boundary."""
        self._describe = True
        self.inbox.wake()
        self.arrivals.wake()

    def poll(self) -> None:
        """Apply the commands due at this step (cheap when there are none)."""
        self.describe_if_asked()
        if self.inbox.has_due(self.state.step):
            self.apply_due_commands()

    def describe_if_asked(self) -> None:
        """Send the snapshot and status again if the controller asked (:meth:`describe_again`)."""
        if self._describe:
            self._describe = False
            self.reporter.snapshot(self.snapshot())
            self.telemetry.report(force=True)

    def poll_before_step(self) -> None:
        """Just before the optimizer step: apply the due commands that only change how the
        optimizer steps (a kind's ``before_step``: lr, optimizer settings), in order, up to
        the first due command of another kind. The step whose gradients are ready then uses
        them: a command is used by the next optimizer step even if it arrived during that
        step's forward and backward. (The step counter has not moved yet, so a replay pins
        them to the same step: same result.)"""
        if self.inbox.has_due(self.state.step):
            self.apply_due_commands(only=_before_step)

    def hold(self) -> None:
        """While paused (and not stopping): wait for commands, apply them, keep reporting."""
        while self.state.paused and not self.state.stopping:
            if self.ranks is None:
                self.inbox.wait(0.2)
            else:  # rank 0 waits for a command; the others wait for rank 0 in the exchange
                if self.ranks.rank == 0:
                    self.arrivals.wait(0.2)
                self.sync()
            self.poll()
            self.telemetry.report()

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
        return _whole(norm)

    def grad_norm(self) -> torch.Tensor:
        """The gradients' total norm, unclipped (front-ends that clip by themselves check it)."""
        grads = [p.grad for p in self.params if p.grad is not None]
        return _whole(torch.nn.utils.get_total_norm(grads)) if grads else torch.zeros(())

    def drop_grads(self) -> None:
        """Make the coming optimizer step a no-op: torch's optimizers skip a parameter whose
        gradient is None (no update, no weight decay, no moment change)."""
        for p in self.params:
            p.grad = None

    def grads_ready(self) -> None:
        """The step's final gradients are in place (front-ends that clip by themselves call it)."""
        if self.diagnostics is not None:
            self.diagnostics.grads_ready()

    def record_step(self, samples: int, started: float, **values: Any) -> dict[str, Any]:
        """Count a finished optimizer step and queue its metric row (returned: the front-end
        may add to it). ``values`` are tensors or numbers (read in bulk at report time)."""
        s = self.state
        s.step += 1
        s.samples_seen += samples
        self.guard.good_step()
        dt = max(time.perf_counter() - started, 1e-9)
        self.telemetry.step_done(samples, dt)
        row: dict[str, Any] = {
            "lr": self.optimizer.param_groups[0]["lr"],
            **values,
            "step_time_s": dt,
            "samples_per_s": samples / dt,
        }
        if self.diagnostics is not None and self.diagnostics.armed:
            row.update(self.diagnostics.collect())
        if self.ranks is not None and self._loss_sent:  # its mean over the ranks comes with the next exchange
            self._loss_sent, self.telemetry.awaiting = False, row
        return self.telemetry.add(s.step, row)

    def after_step(self) -> None:
        """Periodic checkpoint, evaluation and weight version; a report when one is due."""
        step, cfg = self.state.step, self.config
        due, self._checkpoint_due = self._checkpoint_due, False
        if due or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or (
            self.frontend.timed_checkpoints and self.checkpoints.due_by_time()
        ):
            with self.telemetry.busy_with("writing a checkpoint"):
                if self.checkpoints.try_save("periodic") is not None:
                    self.telemetry.durable_through = step
        if cfg.eval_every and self.evaluator.available and step % cfg.eval_every == 0:
            self.weights.settle()  # an evaluation may swap the weights (Schedule-Free's eval())
            self.evaluator.run()
        if cfg.publish_every and step % cfg.publish_every == 0:
            self.weights.try_publish("periodic")
        self.telemetry.report()
        self._arm_diagnostics()  # after evaluation: only the next training step's forward is sampled

    def reached_max_steps(self) -> bool:
        if self.config.max_steps is not None and self.state.step >= self.config.max_steps:
            self.state.stopping = self.state.stopping or f"reached max_steps={self.config.max_steps}"
            return True
        return False

    # -- the end -----------------------------------------------------------------------
    def finish(self) -> TrainerStatus:
        """Final checkpoint and status: the run can be resumed from here."""
        s = self.state
        self.sync()  # many ranks: the exchange in flight finishes (the last step's mean loss)
        if self.checkpoints.saved_at != (s.branch, s.step):  # not twice at one step
            self.checkpoints.try_save("final")
        if self.config.publish_every and self.weights.published_at != (s.branch, s.step):
            self.weights.try_publish("final")
        self.weights.flush(timeout=60)  # every version reaches the controller before "stopped"
        # Commands still in the inbox (an at_step that never came) are failed by the
        # controller once it hears "stopped".
        s.ended = RunStatus.STOPPED
        self._final_report(s.stopping)
        return self.status()

    def end(self, reason: str) -> TrainerStatus:
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
        self._final_report("".join(traceback.format_exception(error, limit=8)))

    def _final_report(self, message: str | None) -> None:
        """The last status, sent once every earlier report has arrived: reports are separate
        calls a threaded controller may reorder, and one that heard "stopped" before the
        outcome of the stop would fail the stop the loop did apply."""
        self.reporter.settle()  # a controller gone: the final report says so or fails alone
        self.telemetry.report(force=True, message=message)
        self.reporter.sync()

    # -- health ------------------------------------------------------------------------
    def non_finite_step(self, loss: torch.Tensor | None, grad_norm: torch.Tensor) -> None:
        """The step's loss or gradient norm was not finite (its gradients are dropped):
        react by the run's policy and leave a trace in the status, metrics and history.
        ``loss`` None: the front-end does not see the step's loss (HF), only its gradients."""
        s = self.state
        values = {"grad_norm": float(grad_norm)} if loss is None else {"loss": float(loss), "grad_norm": float(grad_norm)}
        what = describe_values(**values)
        weights_ok = self.checkpoints.weights_finite()
        target = self.checkpoints.rollback_target() if self.config.health.on_non_finite == "rollback" else None
        verdict = self.guard.non_finite(what, s.step + 1, weights_ok, target)
        log.warning("%s", verdict.message)
        self.telemetry.add(s.step, {"health/skipped_steps": self.guard.skipped_total})
        self._rearm_diagnostics()  # sample the step that is tried next instead
        if verdict.action == "skip":
            s.message = verdict.message
            if self.guard.in_a_row == 1:  # one history entry per streak, not one per step
                self.reporter.event("skip_step", verdict.message, s.step, s.branch)
            self.telemetry.report()
            return
        s.paused = True
        s.message = verdict.message
        if verdict.action == "pause":
            self.reporter.event("pause", verdict.message, s.step, s.branch)
        else:
            assert verdict.target is not None
            self.reporter.event("rollback", verdict.message, s.step, s.branch, submit=self._rollback(verdict.target))
        self.telemetry.report(force=True)

    def _rollback(self, target: str) -> list[dict[str, Any]]:
        """Load the checkpoint, lower each group's lr, go on: commands the controller sends
        as ``system`` (so they are numbered, logged and replayed like any other)."""
        factor = self.config.health.lr_factor
        lrs = {group_name(g, i): g["lr"] * factor for i, g in enumerate(self.optimizer.param_groups)}
        if len(set(lrs.values())) == 1:
            updates = [{"kind": "update_optimizer", "params": {"lr": next(iter(lrs.values()))}}]
        else:
            updates = [{"kind": "update_optimizer", "params": {"lr": lr}, "group": g} for g, lr in lrs.items()]
        return [{"kind": "load_checkpoint", "checkpoint_id": target}, *updates, {"kind": "resume"}]

    # -- commands ----------------------------------------------------------------------
    def apply_due_commands(self, only: Callable[[CommandRecord], bool] | None = None) -> None:
        """Apply the due commands (``only``: just the leading ones it accepts) and report
        their outcomes; between steps, a progress report follows at once."""
        done = []
        while due := self.inbox.due(self.state.step, only=only):  # again after a load: it moves the step
            done.extend(self.apply_records(due))
        if not done:
            return
        self.reporter.outcomes(done, self.snapshot(), self.status())
        if only is None:
            self.telemetry.report(force=True)  # status may have changed (paused, new branch, ...)

    def apply_records(self, due: list[CommandRecord]) -> list[CommandRecord]:
        """Apply ``due`` in order; their outcomes (and those of commands they cancelled)."""
        self.weights.settle()  # a command may write the weights: a copy in flight has them first
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
            done.extend(self._withdrawn)
            self._withdrawn = []
        return done

    def apply(self, cmd: Command) -> str:
        """Apply one command now; returns what it did (raises ``ValueError`` if it cannot)."""
        at = cmd.at_step
        if at is not None and at < self.state.step:  # the controller's view of the step lags
            raise ValueError(f"at_step {at} had passed when it arrived (the run was at step {self.state.step})")
        why = self.frontend.unsupported.get(cmd.kind)
        if why is not None:
            raise ValueError(why)
        return cmd.apply(self)

    def withdrawn(self, record: CommandRecord) -> None:
        """A cancel took ``record`` out of the inbox: its outcome goes with the cancel's."""
        self._withdrawn.append(record)

    def leave_branch(self) -> None:
        """Before a load: the front-ends settle the branch being left, and the rows not yet
        sent are reported on it (many ranks: the last one's mean loss first)."""
        if self.ranks is not None:
            self._settle(self.ranks.finish())
        self.weights.settle()
        for settle in self.before_load:
            settle()
        self.telemetry.report(force=True)

    # -- what the run is -----------------------------------------------------------------
    def status(self, message: str | None = None) -> TrainerStatus:
        return self.telemetry.status(message)

    def snapshot(self) -> Snapshot:
        """What the controller needs to validate commands and UIs need to show settings."""
        s = self.state
        data = self.frontend.data
        return Snapshot(
            groups=describe_optimizer(self.optimizer),
            modules=self.modules(),
            trainable=sum(p.numel() for p in self.params),
            has_eval=self.evaluator.available,
            step=s.step,
            branch=s.branch,
            schedule=s.schedule.to_dict(),
            grad_clip=s.grad_clip,
            grad_accumulation=s.grad_accumulation,
            paused=s.paused,
            mixture=dict(data.position["weights"]) if data is not None else {},  # what batches are drawn with now
            frontend=self.frontend.name,
            unsupported=dict(self.frontend.unsupported),
        )

    def modules(self) -> dict[str, Any]:
        """``describe_modules`` of the model, cached: only module commands and loads change it."""
        if self._modules_view is None:
            self._modules_view = describe_modules(self.model)
        return self._modules_view

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def model_changed(self) -> None:
        """Parameters were frozen, reset or loaded: recount what trains, describe the
        modules afresh, and sample the next step against the new weights."""
        self.params, self._modules_view = self.trainable(), None
        self._rearm_diagnostics()

    # -- per-module health sampling --------------------------------------------------------
    def _arm_diagnostics(self) -> None:
        if self.diagnostics is not None:
            self.diagnostics.arm_for(self.state.step + 1)

    def _rearm_diagnostics(self) -> None:
        """Drop a sample in progress and arm again for the next step."""
        if self.diagnostics is not None:
            self.diagnostics.disarm()
            self._arm_diagnostics()


def _whole(norm: torch.Tensor) -> torch.Tensor:
    """The norm of a sharded model's gradients (FSDP: a replicated DTensor) as a plain tensor."""
    full = getattr(norm, "full_tensor", None)
    return full() if full is not None else norm


def _before_step(record: CommandRecord) -> bool:
    return record.command is not None and record.command.before_step


def finite(loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
    """Whether a step's loss and gradient norm are finite: two scalar reads on the CPU, one
    host sync on an accelerator (NaN and inf survive the float64 sum; finite values can't
    overflow it)."""
    if loss.device.type == "cpu" and grad_norm.device.type == "cpu":
        return math.isfinite(loss.item()) and math.isfinite(grad_norm.item())
    return bool(torch.isfinite(loss.double() + grad_norm.to(loss.device).double()))
