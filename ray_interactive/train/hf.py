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
* ``evaluate`` runs ``trainer.evaluate()``; metrics come from HF's logs.

Not covered: the health guard (HF steps the optimizer itself; a callback cannot drop a
step) and data mixtures (HF reads its own dataset).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from ray_interactive.core import schedules
from ray_interactive.core.config import RunConfig
from ray_interactive.core.link import OpenRun, RunLink
from ray_interactive.core.schedules import Schedule, ScheduleKind
from ray_interactive.core.state import TrainState
from ray_interactive.core.steering import Frontend, Steering

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
    """

    def __init__(self, run: str, *, open_run: OpenRun, trainer: Trainer | None = None,
                 replay: str | Path | None = None, address: str | None = None, **config: Any) -> None:
        for key in ("task", "lr", "schedule", "grad_clip", "grad_accumulation", "max_steps", "eval_every"):
            if key in config:
                raise ValueError(f"{key!r} is the Trainer's own (TrainingArguments); not a steer() option")
        self.config = RunConfig.model_validate({"name": run, **config})  # a bad value fails here, not mid-run
        self.trainer = trainer
        self.replay = replay
        self.address = address
        self._open_run = open_run
        self.core: Steering | None = None
        self.run: RunLink | None = None
        self._t0 = time.perf_counter()
        self._lr_used: float | None = None
        self._in_eval = False
        self._control: Any = None  # HF's TrainerControl at the current control point

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
        self.run = self._open_run(config, self.address)
        try:
            self.core = Steering(
                config, model, optimizer, tstate, self.run.reporter, frontend, next_seq=self.run.next_seq,
                publisher=self.run.publisher, next_weight_version=self.run.next_weight_version,
                device=args.device,
            )
            self.core.before_load.append(lambda: self._log_window(state))
            self.core.checkpoints.after_load.append(lambda doc: self._follow_load(state))
            self.core.start()
            if self.replay is not None:
                self.run.replay(self.replay)
            self.run.connect(self.core)
            self._control_point(args, state, control)
        except BaseException:
            self.run.close()
            self.run = None
            raise

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._t0 = time.perf_counter()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.core is not None:  # an lr that arrived during this step's backward is used by it
            self.core.poll_before_step()
            self.core.grads_ready()  # HF has clipped them by now

    def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if optimizer is not None:
            self._lr_used = float(optimizer.param_groups[0]["lr"])  # what this step used

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        core = self.core
        if core is None:
            return
        values = {"lr": self._lr_used} if self._lr_used is not None else {}
        core.record_step(core.config.batch_size, self._t0, **values)
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

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None,
                    **kwargs: Any) -> None:
        core = self.core
        if core is None or self._in_eval or not metrics:  # the evaluate command records its own
            return
        row = {_eval_key(k): float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        core.telemetry.rows.append((state.global_step, time.time(), row))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        core, run = self.core, self.run
        if core is None or run is None:
            return
        try:
            core.end("the Trainer finished")
        finally:
            run.close()
            self.run = None

    def fail(self, error: BaseException) -> None:
        """The Trainer raised: the run is ``failed`` with the error (``steer`` calls this)."""
        core, run = self.core, self.run
        if core is None or run is None:
            return
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
        core.hold()
        s = core.state
        args.max_grad_norm = s.grad_clip if s.grad_clip is not None else 0.0
        if s.stopping:
            control.should_training_stop = True

    def _log_window(self, state: Any) -> None:
        """Before a load: the loss HF has summed since its last log belongs to the branch
        being left; record it there and empty HF's window (it would log it on the new one)."""
        trainer, core = self.trainer, self.core
        assert core is not None
        last = getattr(trainer, "_globalstep_last_logged", None)
        total = getattr(trainer, "_tr_loss", None)
        if trainer is None or last is None or total is None or state.global_step <= last:
            return
        self.on_log(trainer.args, state, None, logs={"loss": float(total) / (state.global_step - last)})
        trainer._tr_loss -= trainer._tr_loss
        trainer._globalstep_last_logged = state.global_step

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


def _eval_key(k: str) -> str:
    return "eval/" + k.removeprefix("eval_")


def steer(trainer: Trainer, run: str, *, open_run: OpenRun, **kwargs: Any) -> InteractiveCallback:
    """Make ``trainer`` a steerable run named ``run`` (adds :class:`InteractiveCallback`);
    an error in ``trainer.train()`` then marks the run ``failed`` with it. ``open_run``
    connects to the run's controller (``ray_interactive.hf.steer`` passes Ray's)."""
    callback = InteractiveCallback(run, open_run=open_run, trainer=trainer, **kwargs)
    trainer.add_callback(callback)
    train = trainer.train

    def train_and_report(*args: Any, **kw: Any) -> Any:
        try:
            return train(*args, **kw)
        except BaseException as e:
            callback.fail(e)
            raise

    trainer.train = train_and_report  # type: ignore[method-assign]
    return callback
