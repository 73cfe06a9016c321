"""Steer a Hugging Face ``transformers.Trainer`` with callbacks only.

    import ray_interactive as ri
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=valid)
    ri.hf.steer(trainer, run="exp1")      # or callbacks=[ri.hf.InteractiveCallback(run="exp1")]
    trainer.train()

The run then shows in ``runs``, the control UI, the CLI and the Python client like any
other; HF's training loop is untouched (no copy of it here). The control points are
``on_pre_optimizer_step`` (gradients ready, clipped: lr and optimizer settings apply there,
so the step being computed uses them) and ``on_step_end`` (HF has stepped the optimizer and
its lr scheduler and the next step has not begun: every other command applies there, and a
pause holds there) - FIELD-NOTES: HF's hook order. What each command does is the steering core's
(:mod:`ray_interactive.core.steering`); this module only maps it onto HF's objects:

* the lr lives in HF's own ``LambdaLR`` (linear, cosine, constant ... with warmup): a new
  lr rescales its ``base_lrs`` so the schedule keeps its shape from the new value, and the
  group lr and the scheduler's last lr are set so the next step - and HF's logged
  ``learning_rate`` - use exactly it (:class:`HFSchedule`); ``set_lr_schedule`` installs
  one of our schedules as the scheduler's lambdas;
* ``grad_clip`` is ``args.max_grad_norm`` (HF clips; set at the control point it applies
  to the next step); ``set_grad_accumulation`` is refused: HF fixes the micro-batch count
  of an epoch when the epoch starts;
* pause holds the loop in the callback; stop sets ``control.should_training_stop`` (HF
  checks it after a step: a stop before the first step ends the run after one);
* checkpoints are the core's (weights as safetensors, optimizer and scheduler state, the
  train state) in the run's tree; a load also rewinds HF's ``global_step`` (the data
  stream goes on where it was: HF's dataloader does not rewind);
* ``evaluate`` runs ``trainer.evaluate()``; metrics come from HF's logs;
* the health guard checks the gradients at ``on_pre_optimizer_step``: if their norm is not
  finite it drops them, so HF's ``optimizer.step()`` changes nothing (torch's optimizers skip
  a parameter with no gradient: no update, no weight decay), and the run's policy (pause,
  skip, rollback) follows as on our trainer. HF still counts the step and moves its lr
  schedule on by one (they stay in step with each other); the step records no metrics.
  Under fp16 with a gradient scaler the scaler already skips overflowing steps: the guard
  then only acts once the weights themselves are not finite.

* resuming (``ri.hf.steer(trainer, run=..., resume=True)`` after the process died or
  ended) goes through HF's own ``train(resume_from_checkpoint=...)``, so HF skips the batches
  already trained and restores its RNGs where it would: it is handed a view of our newest
  checkpoint (:meth:`InteractiveCallback.hf_checkpoint`: the weights, HF's trainer state
  and RNG files), and the callback restores the rest (optimizer, schedule, train state).

Not covered: data mixtures (HF reads its own dataset).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerState

from ray_interactive.core import schedules
from ray_interactive.core.checkpoints import CheckpointInfo, rng_states
from ray_interactive.core.config import RunConfig
from ray_interactive.core.health import nonfinite_tensors
from ray_interactive.core.link import OpenRun, RunLink
from ray_interactive.core.resume import (
    Resume,
    check_resume,
    checkpoint_dir,
    resolve_resume,
    resume_point,
    resumed_config,
)
from ray_interactive.core.schedules import Schedule, ScheduleKind
from ray_interactive.core.state import TrainState
from ray_interactive.core.steering import Frontend, Steering, finite
from ray_interactive.train.hf_reporting import end_branches, follow_branch
from ray_interactive.train.ranks import Ranks, launcher_rank, own_module, rank_rng

log = logging.getLogger(__name__)

NO_ACCUMULATION = (
    "set_grad_accumulation cannot apply to a Hugging Face Trainer run: HF fixes gradient_accumulation_steps "
    "for an epoch when it starts (set it in TrainingArguments)"
)
NO_MIXTURE = "this Hugging Face Trainer reads its own dataset: set_data_mixture applies to runs on our data buffer"


class ScheduleLambda:
    """One of our schedules as a ``LambdaLR`` lambda (lr = base_lr * this), a callable
    object so the scheduler's ``state_dict`` keeps it."""

    def __init__(self, schedule: dict[str, Any], group: int) -> None:
        self.schedule, self.group = schedule, group
        self._s = Schedule.from_dict(schedule)

    def __call__(self, step: int) -> float:
        return schedules.lr_at(self._s, self.group, step)


class HFSchedule:
    """The lr of a Hugging Face run: HF's ``LambdaLR`` under our commands (an
    :class:`~ray_interactive.core.state.LrControl`)."""

    def __init__(self, scheduler: Any, optimizer: Any) -> None:
        inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's wrapper, if any
        if not isinstance(inner, torch.optim.lr_scheduler.LambdaLR):
            raise ValueError(
                f"ray_interactive steers HF runs whose lr scheduler is a LambdaLR (linear, cosine, constant, "
                f"polynomial ... with warmup); this one is {type(inner).__name__}"
            )
        self.s = inner
        self.optimizer = optimizer
        self._original = list(inner.lr_lambdas)  # HF's own lambdas, to return to on a load

    def lrs(self, step: int) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]  # HF set them for the next step

    def _sync(self) -> None:
        s = self.s
        for i, g in enumerate(self.optimizer.param_groups):
            g["lr"] = float(s.base_lrs[i] * s.lr_lambdas[i](s.last_epoch))
            g["initial_lr"] = s.base_lrs[i]
        s._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def set_lrs(self, step: int, new: dict[int, float]) -> None:
        s = self.s
        for i, lr in new.items():
            f = s.lr_lambdas[i](s.last_epoch)
            if f > 0:
                s.base_lrs[i] = lr / f
            else:  # the schedule has decayed to zero: a constant lr from here
                s.lr_lambdas[i] = ScheduleLambda(Schedule(base_lrs=(1.0,) * len(s.base_lrs)).to_dict(), i)
                s.base_lrs[i] = lr
        self._sync()
        for i, lr in new.items():  # exactly the number asked for, not base * factor rounded
            self.optimizer.param_groups[i]["lr"] = lr
        s._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def start(self, kind: ScheduleKind, step: int, steps: int | None, min_lr_ratio: float, gamma: float,
              warmup_steps: int) -> str:
        s = self.s
        ours = schedules.start(kind, s.last_epoch, self.lrs(step), steps, min_lr_ratio, gamma, warmup_steps)
        for i in range(len(s.base_lrs)):
            s.lr_lambdas[i] = ScheduleLambda(ours.to_dict(), i)
            s.base_lrs[i] = 1.0
        self._sync()
        return f"{kind} schedule from step {step} (replaces the Trainer's scheduler lambdas)"

    def apply(self, step: int) -> None:
        pass  # HF's scheduler.step() sets the group lrs

    def to_dict(self) -> dict[str, Any]:
        s = self.s
        ours = [fn.schedule if isinstance(fn, ScheduleLambda) else None for fn in s.lr_lambdas]
        kind = next((o["kind"] for o in ours if o is not None), "hf")
        return {
            "kind": kind if all(o is not None for o in ours) else "hf",
            "scheduler": type(s).__name__,
            "base_lrs": [float(b) for b in s.base_lrs],
            "last_epoch": int(s.last_epoch),
            "step_count": int(getattr(s, "_step_count", 0)),
            "ours": ours,
        }

    def load_dict(self, d: dict[str, Any]) -> None:
        s = self.s
        if d.get("scheduler") is None:
            raise ValueError("this checkpoint was not written by a Hugging Face run (its schedule is ours)")
        s.base_lrs = list(d["base_lrs"])
        s.last_epoch = int(d["last_epoch"])
        s._step_count = int(d.get("step_count", s.last_epoch + 1))
        for i, ours in enumerate(d["ours"]):
            s.lr_lambdas[i] = ScheduleLambda(ours, i) if ours is not None else self._original[i]
        self._sync()


def _calling_trainer() -> Trainer | None:
    """The ``Trainer`` whose training loop is calling this callback (HF hands callbacks its
    model, optimizer and scheduler, not itself)."""
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back  # type: ignore[assignment]
    return None


class InteractiveCallback(TrainerCallback):
    """Makes the ``Trainer`` it is given to a steerable run named ``run``.

    ``config``: :class:`~ray_interactive.core.config.RunConfig` fields (``run_dir``,
    ``checkpoint_every``, ``publish_every``, ``start_paused``, ``metrics_interval_s`` ...);
    lr, schedule, clipping, accumulation and max steps are the Trainer's own.
    ``replay``: a run directory whose applied commands this run repeats at the same steps.
    ``resume``: True continues the run in its directory from its newest checkpoint (a
    checkpoint id: from that one; "auto": if the run has one, else anew); HF must then be
    started from :meth:`hf_checkpoint` (``ri.hf.steer`` does it). A ``torchrun --max-restarts``
    restart resumes without asking.
    """

    def __init__(self, run: str, *, open_run: OpenRun, trainer: Trainer | None = None,
                 replay: str | Path | None = None, address: str | None = None, resume: Resume = False,
                 **config: Any) -> None:
        for key in ("task", "lr", "schedule", "grad_clip", "grad_accumulation", "max_steps", "eval_every"):
            if key in config:
                raise ValueError(f"{key!r} is the Trainer's own (TrainingArguments); not a steer() option")
        asked = check_resume(resume)
        resume = resolve_resume(run, config, asked)
        if resume is True and asked is not True:
            replay = None  # resumed on its own: the replayed commands are in the run's own log now
        self.resume_point: CheckpointInfo | None = None
        if resume:
            if replay is not None:
                raise ValueError("resume continues a run; replay starts a new one from another's log: not both")
            self.config = resumed_config(run, config)
            self.resume_point = resume_point(self.config, resume)
        else:
            self.config = RunConfig.model_validate({"name": run, **config})  # a bad value fails here, not mid-run
        self.trainer = trainer
        self.replay = replay
        self.address = address
        self._open_run = open_run
        self.core: Steering | None = None
        self.run: RunLink | None = None
        self._t0 = time.perf_counter()
        self._held: dict[str, Any] | None = None  # the step's row, held for its loss (on_log)
        self._lr_used: float | None = None
        self._in_eval = False
        self._control: Any = None  # HF's TrainerControl at the current control point
        self._skipped = False  # the health guard dropped this step's gradients
        self._hf_norm: Any = None  # the gradient norm HF computed for the step under way
        self._scaled = False  # fp16 with a gradient scaler: inf gradients are the scaler's to skip
        self._branch: str | None = None  # the branch HF's own reporting is on
        self._ranks: Ranks | None = None

    # -- HF's events -------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       lr_scheduler: Any = None, **kwargs: Any) -> None:
        if self.trainer is None:
            self.trainer = _calling_trainer()
        trainer = self.trainer
        config = self.config.model_copy(update={"max_steps": state.max_steps or None, "batch_size": max(
            1, args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size))})
        has_eval = trainer is not None and trainer.eval_dataset is not None
        unsupported = {"set_grad_accumulation": NO_ACCUMULATION, "set_data_mixture": NO_MIXTURE}
        if not has_eval:
            unsupported["evaluate"] = (
                "this Trainer has no eval_dataset" if trainer is not None
                else "the callback could not find its Trainer: use ri.hf.steer(trainer, run=...)"
            )
        frontend = Frontend("hf", evaluate=self._evaluate if has_eval else None, unsupported=unsupported)
        tstate = TrainState(
            schedule=HFSchedule(lr_scheduler, optimizer),
            step=state.global_step,
            grad_clip=args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None,
            grad_accumulation=args.gradient_accumulation_steps,
            paused=config.start_paused,
        )
        point = self.resume_point
        if point is not None and state.global_step != point.step:
            raise ValueError(
                f"resuming run {config.name!r} from {point.id} (step {point.step}), but the Trainer starts at step "
                f"{state.global_step}: call trainer.train(resume_from_checkpoint=callback.hf_checkpoint(trainer)) "
                "(ri.hf.steer(..., resume=True) does it for you)")
        ranks = self._ranks = Ranks.of_this_process()  # torchrun, accelerate, a Ray Train worker: rank 0 owns the run
        opener = self._open_run if ranks is None else (
            lambda *a, **kw: ranks.open(self._open_run, *a, **kw))
        self.run = opener(config, self.address, resume=point is not None,
                          resume_from=point.id if point is not None else None)
        try:
            self.core = Steering(
                config, own_module(model), optimizer, tstate, self.run.reporter, frontend,
                next_seq=self.run.next_seq, publisher=self.run.publisher,
                next_weight_version=self.run.next_weight_version, device=args.device,
            )
            if ranks is not None:
                ranks.attach(self.core)
            self._scaled = getattr(getattr(trainer, "accelerator", None), "scaler", None) is not None
            self._watch_grad_norm(trainer)
            self.core.before_load.append(lambda: self._log_window(state))
            self.core.checkpoints.after_load.append(lambda doc: self._follow_load(state))
            if self.run.resume_from is not None:
                self.core.continue_from(self.run.resume_from)
            self.core.start()
            if self.replay is not None:
                self.run.replay(self.replay)
            self.run.connect(self.core)
            self.core.sync()  # the commands queued before the start (a replay's) reach every rank
            self._control_point(args, state, control)
        except BaseException:
            self.run.close()
            self.run = None
            raise

    def hf_checkpoint(self, trainer: Trainer) -> str:
        """Resuming: the directory to pass to ``trainer.train(resume_from_checkpoint=...)``,
        HF's view of the checkpoint the run continues from - its weights (linked), HF's
        trainer state at that step (so HF skips the batches already trained) and the RNG
        states in HF's file (restored by HF after the skip, where its own resume does)."""
        point = self.resume_point
        if point is None:
            raise ValueError("this callback does not resume a run (resume=True or a checkpoint id)")
        src = checkpoint_dir(self.config, point)
        rank = launcher_rank()  # many ranks: one view each (HF reads it on every rank)
        dst = self.config.resolved_run_dir / "hf-resume" / (point.id if rank is None else f"{point.id}-rank{rank}")
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        try:
            os.link(src / "model.safetensors", dst / "model.safetensors")
        except OSError:  # another filesystem, or no hard links there
            shutil.copyfile(src / "model.safetensors", dst / "model.safetensors")
        hf_state = TrainerState(global_step=point.step, train_batch_size=trainer.args.per_device_train_batch_size)
        hf_state.compute_steps(trainer.args, max(trainer.args.max_steps, 1))
        hf_state.save_to_json(str(dst / "trainer_state.json"))
        if rank is None:
            torch.save(_hf_rng(src), dst / "rng_state.pth")
        else:  # HF reads rng_state_<its process index>.pth on many ranks
            torch.save(_hf_rng(src, rank), dst / f"rng_state_{rank}.pth")
        return str(dst)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._t0 = time.perf_counter()
        self._release()  # HF did not log the last step after all: its row goes as it is

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        core = self.core
        if core is None:
            return
        core.sync(pipelined=True)  # many ranks: rank 0's commands reach every rank here, a step after it had them
        core.poll_before_step()  # an lr that arrived during this step's backward is used by it
        norm, self._hf_norm = self._hf_norm, None
        if norm is None:  # HF did not say (another version): one more pass over the gradients
            norm = core.grad_norm()
        elif not isinstance(norm, torch.Tensor):
            norm = torch.tensor(float(norm))
        if not finite(torch.zeros((), device=norm.device), norm) and not self._tolerated(core):
            core.drop_grads()  # never let it reach the weights
            self._skipped = True
            core.non_finite_step(None, norm)
            return
        core.grads_ready()

    def _watch_grad_norm(self, trainer: Trainer | None) -> None:
        """Keep the gradient norm HF computes every step (its ``_get_grad_norm``: pre-clip,
        computed just before ``on_pre_optimizer_step``) for the health check, instead of a
        second pass over the gradients (measured: ~270 us a step on a small GPT-2 on the CPU)."""
        get = getattr(trainer, "_get_grad_norm", None)
        if trainer is None or get is None or getattr(get, "_ri_watched", False):
            return

        def get_grad_norm(*args: Any, **kwargs: Any) -> Any:
            norm = get(*args, **kwargs)
            self._hf_norm = norm
            return norm

        get_grad_norm._ri_watched = True  # type: ignore[attr-defined]
        trainer._get_grad_norm = get_grad_norm  # type: ignore[method-assign]

    def _tolerated(self, core: Steering) -> bool:
        """Inf gradients under a gradient scaler are its own business while the weights are finite."""
        return self._scaled and not nonfinite_tensors(core.model.named_parameters())

    def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if optimizer is not None:
            self._lr_used = float(optimizer.param_groups[0]["lr"])  # what this step used

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        core = self.core
        if core is None:
            return
        if self._skipped:  # HF counted the step; the guard has had its say (no metrics, no periodic work)
            self._skipped = False
            core.state.step = state.global_step
            self._control_point(args, state, control)
            return
        values = {"lr": self._lr_used} if self._lr_used is not None else {}
        row = core.record_step(core.config.batch_size, self._t0, **values)
        if control.should_log and core.telemetry.awaiting is None:
            # HF logs this step's loss right after this hook (on_log): the row is reported
            # with it, not before it (a checkpoint's metrics go to disk complete)
            self._held = core.telemetry.awaiting = row
        if core.state.step != state.global_step:  # HF counted the step: agree with it
            core.state.step = state.global_step
        core.after_step()
        self._control_point(args, state, control)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        core = self.core
        if core is None or not logs:
            return
        row = {k: float(v) for k, v in logs.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("eval_")}
        if not row:
            return
        rows = core.telemetry.rows
        if rows and rows[-1][0] == state.global_step:
            rows[-1][2].update(row)
        else:
            rows.append((state.global_step, time.time(), row))
        if self._held is not None:
            self._release()
            core.telemetry.report()  # the step's row is complete now (at once if it ends a checkpoint's rows)

    def _release(self) -> None:
        """Let the row held for HF's loss go (its loss came, or will not)."""
        core, held, self._held = self.core, self._held, None
        if core is not None and held is not None and core.telemetry.awaiting is held:
            core.telemetry.awaiting = None

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        core = self.core
        if core is not None and not self._in_eval and core.telemetry.busy is None:
            core.telemetry.busy = "evaluating"  # HF's own evaluation (eval_strategy): quiet, not hung
            core.telemetry.report(force=True)

    def on_predict(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.core is not None and not self._in_eval:
            self.core.telemetry.busy = None

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None,
                    **kwargs: Any) -> None:
        core = self.core
        if core is None or self._in_eval:  # the evaluate command records its own
            return
        core.telemetry.busy = None
        if not metrics:
            return
        row = {_eval_key(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        core.telemetry.rows.append((state.global_step, time.time(), row))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        core, run = self.core, self.run
        if core is None or run is None:
            return
        if self._ranks is not None:
            self._ranks.ending = True
        self._release()
        try:
            core.end("the Trainer finished")
        finally:
            end_branches(self.trainer)
            run.close()
            self.run = None

    def fail(self, error: BaseException) -> None:
        """The Trainer raised: the run is ``failed`` with the error (``steer`` calls this)."""
        core, run = self.core, self.run
        if core is None or run is None:
            return
        if self._ranks is not None:
            error = self._ranks.failure(error)
        try:
            core.fail(error)
        finally:
            run.close()
            self.run = None

    # -- the control point -------------------------------------------------------------
    def _control_point(self, args: Any, state: Any, control: Any) -> None:
        """Apply due commands, hold while paused, and hand the result to HF's objects."""
        core = self.core
        assert core is not None
        self._control = control
        core.poll()
        if core.state.paused:
            self._release()  # HF logs only after this hook returns: no row waits out a pause
        core.hold()
        s = core.state
        if s.branch != self._branch:  # a load moved the run: HF's own reporting follows (hf_reporting)
            if self._branch is not None:
                follow_branch(self.trainer, args, state, s.branch, self._branch, s.step)
            self._branch = s.branch
        args.max_grad_norm = s.grad_clip if s.grad_clip is not None else 0.0
        if s.stopping:
            control.should_training_stop = True

    def _log_window(self, state: Any) -> None:
        """Before a load: the loss HF has summed since its last log belongs to the branch
        being left; log it there through HF's own ``log`` (so HF's trackers get it too) and
        empty HF's window (it would log it on the new one)."""
        trainer, core = self.trainer, self.core
        assert core is not None
        last = getattr(trainer, "_globalstep_last_logged", None)
        total = getattr(trainer, "_tr_loss", None)
        if trainer is None or last is None or total is None or state.global_step <= last:
            return
        loss = float(total)
        trainer._tr_loss -= trainer._tr_loss
        trainer._globalstep_last_logged = state.global_step
        trainer._total_loss_scalar = getattr(trainer, "_total_loss_scalar", 0.0) + loss  # HF's train_loss counts it
        control = self._control
        flags = None if control is None else (control.should_log, control.should_evaluate, control.should_save)
        trainer.log({"loss": loss / (state.global_step - last)})
        if control is not None and flags is not None:  # this step's own flags stand
            control.should_log, control.should_evaluate, control.should_save = flags

    def _follow_load(self, state: Any) -> None:
        """A checkpoint was loaded: HF's step counter follows (and its logging window)."""
        assert self.core is not None
        state.global_step = self.core.state.step
        if self.trainer is not None and hasattr(self.trainer, "_globalstep_last_logged"):
            self.trainer._globalstep_last_logged = state.global_step

    def _evaluate(self) -> dict[str, float]:
        assert self.trainer is not None
        control = self._control
        flags = None if control is None else (control.should_log, control.should_evaluate, control.should_save)
        self._in_eval = True
        try:
            metrics = self.trainer.evaluate()
        finally:
            self._in_eval = False
            if control is not None and flags is not None:  # HF's log() clears should_log: this step still logs
                control.should_log, control.should_evaluate, control.should_save = flags
        return {_eval_key(k): float(v) for k, v in metrics.items()
                if isinstance(v, (int, float)) and not k.endswith(("_runtime", "_per_second")) and k != "epoch"}


def _hf_rng(checkpoint: Path, rank: int | None = None) -> dict[str, Any]:
    """A checkpoint's RNG states in the shape of HF's ``rng_state.pth`` (``rank``: that
    rank's, from a checkpoint written on many)."""
    from safetensors.torch import load_file

    doc = json.loads((checkpoint / "state.json").read_text())
    plain, tensors = doc["rng"], load_file(str(checkpoint / "rng.safetensors"))
    every = doc["state"].get("ranks_rng")
    if rank is not None and every and rank < len(every):
        plain, tensors = rank_rng(every[rank])
    python_state, numpy_state = rng_states(plain)
    out: dict[str, Any] = {"python": python_state, "numpy": numpy_state, "cpu": tensors["torch_cpu"]}
    if "torch_cuda_0" in tensors:
        out["cuda"] = tensors["torch_cuda_0"]
    return out


def _eval_key(k: str) -> str:
    return "eval/" + k.removeprefix("eval_")


def steer(trainer: Trainer, run: str, *, open_run: OpenRun, **kwargs: Any) -> InteractiveCallback:
    """Make ``trainer`` a steerable run named ``run`` (adds :class:`InteractiveCallback`);
    an error in ``trainer.train()`` then marks the run ``failed`` with it. With
    ``resume=True`` (or a checkpoint id) ``trainer.train()`` continues the run from its
    newest checkpoint. ``open_run`` connects to the run's controller
    (``ray_interactive.hf.steer`` passes Ray's)."""
    callback = InteractiveCallback(run, open_run=open_run, trainer=trainer, **kwargs)
    trainer.add_callback(callback)
    train = trainer.train

    def train_and_report(*args: Any, **kw: Any) -> Any:
        if callback.resume_point is not None and not args and kw.get("resume_from_checkpoint") is None:
            kw["resume_from_checkpoint"] = callback.hf_checkpoint(trainer)
        try:
            return train(*args, **kw)
        except BaseException as e:
            callback.fail(e)
            raise

    trainer.train = train_and_report  # type: ignore[method-assign]
    return callback
