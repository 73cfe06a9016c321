"""Steer a plain PyTorch loop: the control point is the optimizer step.

    import ray_interactive as ri

    with ri.steer("exp2", model, optimizer, max_steps=1000) as s:
        while s.running:
            loss = model(next(batches)).loss
            loss.backward()
            s.step(loss=loss)          # clip, optimizer step, lr schedule, commands

``s.step`` does what our Trainer's loop does around the forward/backward: it clips by the
run's ``grad_clip``, checks the step is finite (the health guard), applies due lr and
optimizer-setting commands, steps the optimizer at the lr the run's schedule and commands
say, zeroes the gradients, records metrics, and applies the other due commands - between
optimizer steps, as every front-end does; while the run is paused it waits there. With ``grad_accumulation`` = k (a config value or a
command) only every k-th call steps, with the gradients averaged. A loop that cannot be
edited can be steered at ``optimizer.step`` instead: :meth:`Session.wrap_optimizer`.

Everything else - the command log, UI, CLI, checkpoints and branches, metrics, replay -
is the same as for any run (see :mod:`ray_interactive.core.steering`). The loop reads its own
data, so ``set_data_mixture`` is refused, and a loaded checkpoint restores model,
optimizer, schedule, step and the global RNGs (Python, NumPy, torch) but not the loop's
position in its data: a loop that draws its batches from those RNGs continues exactly,
one that reads a dataset skips ``s.state.step`` batches itself.

A run whose process died (or ended) is continued with ``ri.steer(..., resume=True)`` (the
newest checkpoint; or ``resume="main@400"``) in the same run directory: its command log,
metrics and branches go on, and the steps after the checkpoint are computed again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ray_interactive.core.config import RunConfig
from ray_interactive.core.link import OpenRun, RunLink
from ray_interactive.core.resume import Resume, check_resume, resolve_resume, resume_point, resumed_config
from ray_interactive.core.state import TrainState
from ray_interactive.core.steering import Frontend, Steering, evaluate_model, finite
from ray_interactive.train.ranks import Ranks, own_module

log = logging.getLogger(__name__)

NO_MIXTURE = "this loop reads its own data: set_data_mixture applies to runs that train from our data buffer"


class Session:
    """A steered run whose loop is the caller's (see the module docstring)."""

    def __init__(
        self,
        config: RunConfig,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        open_run: OpenRun,
        evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
        replay: str | Path | None = None,
        address: str | None = None,
        samples_per_step: int | None = None,
        resume_from: str | None = None,
    ) -> None:
        self.config = config
        self._resume_from = resume_from  # a checkpoint id: continue the run from it
        self._open_run = open_run
        self._evaluate_fn = evaluate
        self._replay = replay
        self._address = address
        self._samples = samples_per_step or config.batch_size
        state = TrainState.starting(config, optimizer)
        self._frontend = Frontend(
            "loop", evaluate=self._evaluate if evaluate is not None else None, unsupported={"set_data_mixture": NO_MIXTURE}
        )
        if evaluate is None:
            self._frontend.unsupported["evaluate"] = "this loop has no evaluation: pass evaluate=fn(model) to ri.steer"
        self._model, self._optimizer, self._state = model, optimizer, state
        self.core: Steering | None = None
        self.run: RunLink | None = None
        self._micro = 0  # backward passes since the last optimizer step
        self._losses: list[torch.Tensor] = []
        self._started = time.perf_counter()
        self._unwrapped: Callable[..., Any] | None = None
        self._ranks: Ranks | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> Session:
        return self.start()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            self.fail(exc)
        else:
            self.close()

    def start(self) -> Session:
        """Create the run's controller, take the commands already queued (a replay's),
        and hold while the run starts paused."""
        resuming = self._resume_from is not None
        ranks = self._ranks = Ranks.of_this_process()  # torchrun, accelerate, a Ray Train worker: rank 0 owns the run
        if ranks is not None:
            self.run = ranks.open(self._open_run, self.config, self._address, resume=resuming,
                                  resume_from=self._resume_from)
            self._samples *= ranks.world  # samples/s counts every rank's batch
        else:
            self.run = self._open_run(self.config, self._address, resume=resuming, resume_from=self._resume_from)
        try:
            self.core = Steering(
                self.config, own_module(self._model), self._optimizer, self._state, self.run.reporter, self._frontend,
                next_seq=self.run.next_seq, publisher=self.run.publisher,
                next_weight_version=self.run.next_weight_version, device=_device_of(self._model),
            )
            if ranks is not None:
                ranks.attach(self.core)
            if self.run.resume_from is not None:
                self.core.continue_from(self.run.resume_from)
            self.core.start()
            if self._replay is not None:
                self.run.replay(self._replay)
            self.run.connect(self.core)
            self.core.sync()  # the commands queued before the start (a replay's) reach every rank
            self._control_point()
        except BaseException:
            self.run.close()
            raise
        self._started = time.perf_counter()
        return self

    def close(self) -> dict[str, Any]:
        """End the run: final checkpoint, status ``stopped``, log flushed."""
        core, run = self._require()
        if self._ranks is not None:
            self._ranks.ending = True
        if self._unwrapped is not None:
            self._optimizer.step = self._unwrapped  # type: ignore[method-assign]
            self._unwrapped = None
        try:
            return core.end("the loop ended")
        finally:
            run.close()

    def fail(self, error: BaseException) -> None:
        core, run = self._require()
        if self._ranks is not None:
            error = self._ranks.failure(error)
        try:
            core.fail(error)
        finally:
            run.close()

    def _require(self) -> tuple[Steering, RunLink]:
        if self.core is None or self.run is None:
            raise RuntimeError("the session has not started: use `with ri.steer(...) as s:` or s.start()")
        return self.core, self.run

    # -- the control point -------------------------------------------------------------
    @property
    def running(self) -> bool:
        """False once the run is to end (a stop command, ``max_steps``): leave the loop."""
        core, _ = self._require()
        return not core.state.stopping and not core.reached_max_steps()

    @property
    def state(self) -> TrainState:
        return self._state

    @property
    def client(self) -> Any:
        """A :class:`~ray_interactive.runtime.client.RunClient` of this run (while it runs)."""
        return self._require()[1].client()

    def step(self, loss: torch.Tensor | float | None = None, **metrics: Any) -> bool:
        """Call after ``loss.backward()``: the optimizer step and everything around it.
        Returns True if the optimizer stepped (False: accumulating, or a skipped step)."""
        return self._step(self._unwrapped or self._optimizer.step, loss, metrics)

    def _step(self, optimizer_step: Callable[..., Any], loss: Any, metrics: dict[str, Any]) -> bool:
        core, _ = self._require()
        if core.state.stopping:
            return False
        if loss is not None:
            self._losses.append(loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss)))
        self._micro += 1
        k = core.state.grad_accumulation
        if self._micro < k:
            return False
        if self._micro > 1:  # average the accumulated gradients, as our Trainer's scaled losses do
            for p in core.params:
                if p.grad is not None:
                    p.grad.div_(self._micro)
        samples = self._samples * self._micro
        self._micro = 0
        losses, self._losses = self._losses, []
        mean_loss = (torch.stack(losses).mean() if len(losses) > 1 else losses[0]) if losses else None
        core.begin_step()
        grad_norm = core.clip()
        checked = mean_loss if mean_loss is not None else torch.zeros(())
        if core.ranks is None:
            ok = finite(checked, grad_norm)
        else:  # the gradient norm decides: it is the same on every rank (all-reduced gradients; a NaN loss spreads)
            ok = finite(torch.zeros(()), grad_norm)
            core.sync(mean_loss, pipelined=True)  # one exchange a step: commands, the mean loss
        if not ok:  # never let it reach the weights
            self._optimizer.zero_grad(set_to_none=True)
            core.non_finite_step(checked, grad_norm)
            self._control_point()
            return False
        core.poll_before_step()  # an lr that arrived during this step's backward is used by it
        optimizer_step()
        self._optimizer.zero_grad(set_to_none=True)
        values = {"grad_norm": grad_norm, **metrics}
        if mean_loss is not None:
            values["loss"] = mean_loss
        core.record_step(samples, self._started, **values)
        core.after_step()
        self._control_point()
        self._started = time.perf_counter()
        return True

    def _control_point(self) -> None:
        """Between optimizer steps: apply due commands; wait here while paused."""
        core, _ = self._require()
        core.poll()
        core.hold()
        core.reached_max_steps()

    def wrap_optimizer(self) -> Session:
        """Steer a loop that cannot be edited: ``optimizer.step()`` becomes the control
        point (with no loss to record; gradients are clipped and checked the same way)."""
        if self._unwrapped is None:
            original = self._optimizer.step
            self._unwrapped = original

            def step(closure: Any = None) -> None:
                self._step(original if closure is None else (lambda: original(closure)), None, {})

            self._optimizer.step = step  # type: ignore[method-assign]
        return self

    def _evaluate(self) -> dict[str, float]:
        fn = self._evaluate_fn
        assert fn is not None
        return evaluate_model(self._model, lambda: fn(self._model))


def steer(
    run: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    open_run: OpenRun,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    replay: str | Path | None = None,
    address: str | None = None,
    samples_per_step: int | None = None,
    resume: Resume = False,
    **config: Any,
) -> Session:
    """A :class:`Session` for the run named ``run``; use it as a context manager.

    ``config``: any :class:`~ray_interactive.core.config.RunConfig` field (``max_steps``,
    ``grad_clip``, ``grad_accumulation``, ``schedule={"kind": "cosine", "steps": 1000}``,
    ``checkpoint_every``, ``run_dir``, ``start_paused``, ...), validated. The lr is the
    optimizer's own. ``evaluate(model) -> {name: value}`` enables the evaluate command and
    ``eval_every``. ``replay``: a run directory whose applied commands this run repeats at
    the same steps. ``resume``: True continues the run in its directory from its newest
    checkpoint (a checkpoint id: from that one), with the configuration it was started with
    (``config`` given here overrides it); "auto" does so if the run has a checkpoint and starts
    it anew otherwise (for a script a launcher restarts: Ray Train's ``FailureConfig``; under
    ``torchrun --max-restarts`` a restart does it without asking). ``open_run`` connects to the run's controller
    (``ray_interactive.steer`` passes Ray's).
    """
    if "task" in config or "lr" in config:
        raise ValueError("ri.steer takes the lr from the optimizer and trains your loop: no 'task' or 'lr' here")
    asked = check_resume(resume)
    resume = resolve_resume(run, config, asked)
    if resume is True and asked is not True:
        replay = None  # resumed on its own: the replayed commands are in the run's own log now
    resume_from = None
    if resume:
        if replay is not None:
            raise ValueError("resume continues a run; replay starts a new one from another's log: not both")
        cfg = resumed_config(run, config)
        resume_from = resume_point(cfg, resume).id
    else:
        cfg = RunConfig.model_validate({"name": run, "grad_clip": None, **config})
    return Session(cfg, model, optimizer, open_run=open_run, evaluate=evaluate, replay=replay, address=address,
                   samples_per_step=samples_per_step, resume_from=resume_from)


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
