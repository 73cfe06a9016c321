"""Our trainer: owns model, optimizer and data feed, and runs the step loop - one loop
for one rank and for many (where ranks differ it asks its :class:`~ray_interactive.train.ddp.Ranks`:
``if ddp:``, as nanoGPT does).

The loop reads top to bottom (:meth:`Trainer.run`): apply due commands, get the next
batches (prefetched), forward/backward over the micro-batches, clip, check the step is
finite, optimizer step, record metrics. Everything a command does, the train state,
checkpoints, health and reporting are the steering core's
(:class:`~ray_interactive.core.steering.Steering`, shared with the Hugging Face and plain-loop
front-ends); what is left here is the loop and its data. The step never waits for
another actor: the inbox is filled by another thread, batches were requested steps ago,
metrics leave in the background every ``metrics_interval_s``.

The trainer talks to the controller through a :class:`Reporter` (fire-and-forget), to
the data through a feed (:mod:`ray_interactive.data.feeds`), and publishes weights through a
publisher (:mod:`ray_interactive.core.weights`), so this class has no Ray in it and unit tests
drive it in-process.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ray_interactive.core.commands import CommandRecord
from ray_interactive.core.config import RunConfig
from ray_interactive.core.messages import TrainerStatus
from ray_interactive.core.reporting import Reporter
from ray_interactive.core.state import TrainState
from ray_interactive.core.steering import Frontend, Steering, evaluate_model, finite
from ray_interactive.core.task import Task
from ray_interactive.core.weights import Publisher
from ray_interactive.data.feeds import Batch
from ray_interactive.train.ddp import Ranks
from ray_interactive.train.ranks import peer_lost

__all__ = ["Feed", "Reporter", "Trainer", "resolve_device"]

log = logging.getLogger(__name__)


class Feed(Protocol):
    """Where batches come from (see :mod:`ray_interactive.data.feeds`)."""

    position: dict[str, Any]

    def next(self) -> Batch | None: ...

    def reset(self, position: dict[str, Any], weights: dict[str, float] | None = None) -> None: ...


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


class Trainer:
    """Model, optimizer, data feed and the interactive step loop."""

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
        ranks: Ranks | None = None,
    ) -> None:
        """``ranks``: this trainer is one rank of many (DDP); None: the only one."""
        self.config = config
        self.task = task
        self.device = resolve_device(config.device)
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        torch.manual_seed(config.seed)

        model = task.build_model().to(self.device)
        optimizer = task.build_optimizer(model, config.lr)
        state = TrainState.starting(config, optimizer)
        frontend = Frontend("trainer", evaluate=self._evaluate if task.has_eval else None)
        self.core = Steering(
            config, model, optimizer, state, reporter, frontend,
            next_seq=next_seq, publisher=publisher, next_weight_version=next_weight_version, device=self.device,
        )
        self.core.telemetry.on_report.append(self._first_use_summary)
        self._first_use: list[np.ndarray] = []  # seconds from ingest to first gradient, since the last report
        self.first_use_log: collections.deque[float] = collections.deque(maxlen=100_000)  # the same, kept for benchmarks
        self._step_started = time.perf_counter()

        position = None
        if resume_from is not None:
            position = self.core.checkpoints.load(resume_from)["data_position"]
            reporter.rewind(state.branch, state.step + 1)
        self.feed = feed_factory(position)
        frontend.data = self.feed
        self.forward_model: torch.nn.Module = model  # what the loss runs through (DDP wraps it)
        self.ddp = ranks
        if ranks is not None:
            ranks.attach(self)
        else:  # this loop owns every write to its weights: a version's copy overlaps the next step
            self.core.weights.overlap = True
        self._autocast = (
            (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if config.autocast == "bf16"
            else contextlib.nullcontext
        )

    # The model and the state, as the loop and tests read them.
    @property
    def model(self) -> torch.nn.Module:
        return self.core.model

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.core.optimizer

    @property
    def state(self) -> TrainState:
        return self.core.state

    @property
    def step(self) -> int:
        return self.core.state.step

    @property
    def paused(self) -> bool:
        return self.core.state.paused

    def deliver(self, records: list[CommandRecord]) -> None:
        """Called from the control thread: queue accepted commands."""
        self.core.deliver(records)

    def status(self, message: str | None = None) -> TrainerStatus:
        return self.core.status(message)

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> TrainerStatus:
        """Train until stopped (command, ``max_steps``) or failed; return the final status."""
        core, state, ddp = self.core, self.core.state, self.ddp
        core.start()
        try:
            while True:
                if ddp:
                    ddp.boundary()  # every rank applies what is due here, at once
                else:
                    core.poll()
                if state.stopping:
                    break
                if state.paused:
                    if ddp:
                        ddp.idle()
                    else:
                        core.inbox.wait(0.2)
                    continue
                if core.reached_max_steps():
                    break
                batches = self._next_batches()
                if batches is None and not ddp:
                    self.wait_for_data()
                    continue
                while batches is None:  # many ranks: wait in place (they meet in the next backward)
                    assert ddp is not None
                    ddp.wait_for_data()
                    batches = self._next_batches()
                if self._train_step(batches):
                    core.after_step()
            return core.finish()
        except Exception as e:
            if ddp and peer_lost(e):  # another rank died under a collective: the launcher recovers all of them
                log.warning("rank %d: a peer was lost (%s)", ddp.rank, str(e).splitlines()[0][:200])
                raise
            log.exception("training failed")
            core.fail(e)
            raise

    def _next_batches(self) -> list[Batch] | None:
        """The ``grad_accumulation`` batches of the next step; None if there is no data."""
        self._step_started = time.perf_counter()  # a step's time includes waiting for its data
        batches: list[Batch] = []
        state = self.core.state
        while len(batches) < state.grad_accumulation:
            batch = self.feed.next()
            if batch is None:
                if not batches:
                    return None
                time.sleep(0.05)  # mid-cycle: wait for data, never apply commands
                continue
            batches.append(batch)
        if state.waiting_for_data:
            state.waiting_for_data, state.message = False, None
        return batches

    def _train_step(self, batches: list[Batch]) -> bool:
        """One optimizer step over the micro-batches; False if the health guard skipped it."""
        core, ddp = self.core, self.ddp
        core.begin_step()
        losses, extras = [], {}
        for batch in batches:
            with self._autocast():
                out = self.task.loss(self.forward_model, self.task.collate(batch.table, self.device))
            loss, extra = (out if isinstance(out, tuple) else (out, {}))
            scaled = loss / len(batches)
            if ddp:  # what this rank tells the others rides in DDP's all-reduce
                scaled = ddp.to_backward(scaled, loss.detach(), len(batches))
            scaled.backward()
            losses.append(loss.detach())
            for k, v in extra.items():  # averaged over micro-batches, like the loss
                extras[k] = extras.get(k, 0.0) + v / len(batches)
        loss = torch.stack(losses).mean() if len(losses) > 1 else losses[0]
        if ddp:
            ddp.after_backward()
        grad_norm = core.clip()
        # Many ranks: the gradients were all-reduced, so their norm is the same on every
        # rank and every rank skips the same steps (a rank's own loss alone could split them).
        if not finite(torch.zeros(()) if ddp else loss, grad_norm):  # never let it reach the weights
            core.optimizer.zero_grad(set_to_none=True)
            core.non_finite_step(loss, grad_norm)
            return False
        if not ddp:  # an lr that arrived during this step's backward is used by it (ranks: at the boundary)
            core.poll_before_step()
        core.weights.window_s = time.perf_counter() - self._step_started
        if waited := core.weights.settle():  # a version's copy still being taken: it reads these weights
            extras["publish_wait_s"] = waited
        core.optimizer.step()
        core.optimizer.zero_grad(set_to_none=True)
        samples = self.config.batch_size * len(batches)
        row = core.record_step(samples, self._step_started, loss=loss, grad_norm=grad_norm, **extras)
        if ddp:
            ddp.after_record(row)
        metas = [b.meta for b in batches]
        for m in metas:  # what the mixture actually delivered
            for source, count in m["counts"].items():
                row[f"mix/{source}"] = row.get(f"mix/{source}", 0.0) + count / samples
        self._freshness(metas, row)
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

    def wait_for_data(self) -> None:
        """No source with a weight has rows: say so in the status, stay responsive."""
        state = self.core.state
        if not state.waiting_for_data:
            weighted = [f"{k}={v:g}" for k, v in self.feed.position["weights"].items() if v > 0]
            state.waiting_for_data = True
            state.message = (
                f"waiting for data: no source with a weight > 0 has rows yet (weights: {', '.join(weighted) or 'none'}); "
                "ingest rows or change the mixture"
            )
            self.core.telemetry.report(force=True)
        else:
            self.core.telemetry.report()
        self.core.inbox.wait(0.1)

    def _first_use_summary(self) -> None:
        """p50/p95 of first-use latency since the last report, on its newest row."""
        rows = self.core.telemetry.rows
        if self._first_use and rows:
            lat = np.concatenate(self._first_use)
            self._first_use = []
            row = rows[-1][2]
            row["data/first_use_p50_s"], row["data/first_use_p95_s"] = np.percentile(lat, [50, 95]).tolist()
            row["data/first_used_rows"] = len(lat)

    def _evaluate(self) -> dict[str, float]:
        model = self.core.model
        return evaluate_model(model, lambda: self.task.evaluate(model, self.device))
