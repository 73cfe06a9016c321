"""Our trainer on many ranks (DDP; gloo on CPU, NCCL on GPU), steered exactly like one.

The step loop is :class:`~ray_interactive.train.trainer.Trainer`'s own; where ranks
differ it calls the :class:`Ranks` it was given (``if ddp:``, as nanoGPT does). Whoever
starts the ranks (a Ray Train worker group: ``ray_interactive.runtime.workers``) gives
each one a ``Ranks(rank, world)``; this module only uses ``torch.distributed``.

**Every rank applies every command at the same optimizer step**, and a step with nothing
due pays no extra communication. Only rank 0 hears from the controller (its puller fills
its inbox). Before each step, rank 0 takes the commands due at the boundary after it out
of its inbox and pickles them. The model is wrapped with a 3-element control parameter
that DDP all-reduces with the gradients anyway: each rank adds ``[flag, loss, size]`` to
its gradient (rank 0's flag says a timed checkpoint is due, ``size`` is the pickled
commands' bytes, the losses average into the mean loss across ranks). After backward
every rank reads the sums; at the boundary, only when ``size`` > 0, one broadcast of
those bytes reaches every rank and each applies them there, in order. The control
parameter is not in the optimizer and adds nothing to the loss.

**Data**: each rank draws its own deterministic stream from the one buffer (its lane,
seeded by rank; disjoint shares of every epoch and of the fresh rows). **Checkpoints** are
written once, by rank 0, with every rank's data position (gathered when it is written,
always at a step all ranks share); a run saved with N workers resumes with N. **Metrics**
are rank 0's, with ``loss`` the mean over ranks (``loss/rank0`` its own).

While paused (and before the first step), the ranks meet every 0.1 s in a small all-reduce
to hear whether something is due (no training).
"""

from __future__ import annotations

import logging
import pickle
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from ray_interactive.core.commands import CommandRecord
from ray_interactive.core.ranks import CHECKPOINT_DUE
from ray_interactive.train.ranks import broadcast_records

if TYPE_CHECKING:
    from ray_interactive.train.trainer import Feed, Trainer

log = logging.getLogger(__name__)

#: Why a kind cannot be applied by many workers (refused at submission, with this reason).
UNSUPPORTED = {
    "update_module": "freezing or changing modules under DDP needs the worker group rebuilt; not supported with "
    "workers > 1 (run with --workers 1, or restart the run with the change in the task)",
}


def own_position(position: dict[str, Any], rank: int, world: int) -> dict[str, Any]:
    """This rank's data position out of a checkpoint's (``{"ranks": [...]}``)."""
    ranks = position.get("ranks")
    if ranks is None:
        raise ValueError(f"this checkpoint was written by one worker; resume it with workers=1, not {world}")
    if len(ranks) != world:
        raise ValueError(f"this checkpoint was written by {len(ranks)} workers; resume it with workers={len(ranks)}, "
                         f"not {world}")
    return ranks[rank]


class RankData:
    """The steering core's view of a rank's data: its own feed, and at checkpoints the
    positions of all ranks (a collective: called at the same step on every rank). The
    checkpoint also records what each rank had reached (step, branch, lrs, a checksum of
    the weights): ranks that disagree are an error in the run's history."""

    def __init__(self, feed: Feed, rank: int, world: int, fingerprint: Any) -> None:
        self.feed, self.rank, self.world = feed, rank, world
        self.fingerprint = fingerprint
        self.disagreement: str | None = None

    @property
    def position(self) -> dict[str, Any]:
        return self.feed.position

    def checkpoint_position(self) -> dict[str, Any]:
        ranks: list[Any] = [None] * self.world
        dist.all_gather_object(ranks, (self.feed.position, self.fingerprint()))
        states = [r[1] for r in ranks]
        self.disagreement = None if all(s == states[0] for s in states) else f"ranks disagree: {states}"
        return {"ranks": [r[0] for r in ranks], "rank_states": states}

    def reset(self, position: dict[str, Any], weights: dict[str, float] | None = None) -> None:
        if "ranks" in position:
            position = own_position(position, self.rank, self.world)
        self.feed.reset(position, weights)

    def next(self) -> Any:
        return self.feed.next()


class Ranks:
    """What one rank of many does where its step differs from a single trainer's."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        self._flag = 0  # what the ranks heard: rank 0's flag ...
        self._size = 0  # ... and the size of the commands it will broadcast
        self._heard_step = False  # whether they heard it in this step's backward
        self._said: tuple[int, int] | None = None  # what this rank says in the step under way
        self._mine = torch.zeros(3)  # ... as added to the control parameter's gradient
        self._mean_loss = 0.0
        self._payload = b""  # rank 0: those commands, pickled
        self._sync_s = 0.0  # time this step spent delivering commands (the metric ddp/sync_ms)

    def attach(self, trainer: Trainer) -> None:
        """Make ``trainer`` one rank of many: DDP around its model, its data a rank's share."""
        self.t = trainer
        core = trainer.core
        fe = core.frontend
        fe.name = "ddp"
        fe.unsupported.update(UNSUPPORTED)
        fe.writes_checkpoints = self.rank == 0
        fe.timed_checkpoints = False  # rank 0 keeps the clock and says so in its flag
        if self.rank != 0:
            fe.evaluate = None  # rank 0 evaluates; the others go on to the next step's all-reduce
        fe.data = self.data = RankData(trainer.feed, self.rank, self.world, self._fingerprint)
        core.checkpoints.on_save.append(self._check_agreement)
        self.control = _Controlled(core.model, self)
        trainer.forward_model = torch.nn.parallel.DistributedDataParallel(
            self.control, device_ids=[trainer.device.index or 0] if trainer.device.type == "cuda" else None
        )

    def _fingerprint(self) -> dict[str, Any]:
        core = self.t.core
        state = core.state
        weights = sum(float(p.detach().double().sum()) for p in core.model.parameters())
        lrs = [g["lr"] for g in core.optimizer.param_groups]
        return {"step": state.step, "branch": state.branch, "lrs": lrs, "weights": weights,
                "grad_clip": state.grad_clip, "paused": state.paused}

    def _check_agreement(self) -> None:
        why = self.data.disagreement
        if why and self.rank == 0:
            log.error(why)
            state = self.t.core.state
            self.t.core.reporter.event("ranks_disagree", why[:2000], state.step, state.branch, failed=True)

    # -- the step boundary ---------------------------------------------------------------
    def _ask(self, step: int) -> tuple[int, int]:
        """Rank 0: take the commands due at ``step`` out of the inbox and pickle them;
        returns what it tells the others, ``(flag, size)`` (other ranks: zeros)."""
        if self.rank != 0:
            return 0, 0
        core = self.t.core
        due = core.inbox.due(step)
        self._payload = pickle.dumps(due) if due else b""
        flag = CHECKPOINT_DUE if core.config.checkpoint_interval_s and core.checkpoints.due_by_time() else 0
        return flag, len(self._payload)

    def boundary(self) -> None:
        """The step boundary: what rank 0 said is due happens here, on every rank."""
        core = self.t.core
        t0 = time.perf_counter()
        if self.rank == 0:
            core.describe_if_asked()
        if not self._heard_step:  # paused, or before the first step: ask now (a small blocking all-reduce)
            flag, size = self._ask(core.state.step)
            buf = torch.tensor([float(flag), float(size)], dtype=torch.float64)
            dist.all_reduce(buf)
            self._flag, self._size = int(buf[0].item()), int(buf[1].item())
            t0 = time.perf_counter()  # the wait above is the pause's, not a step's
        self._heard_step = False
        flag, size, self._flag, self._size = self._flag, self._size, 0, 0
        try:
            due = self._receive(size) if size else []
        finally:
            self._sync_s += time.perf_counter() - t0
        if flag & CHECKPOINT_DUE:
            core.checkpoints.try_save("periodic")
        # Taken for step + 1, but a skipped (non-finite) step left the count where it was:
        # what is pinned further on goes back to rank 0's inbox, on every rank alike.
        step = core.state.step
        later = [r for r in due if r.command is not None and (r.command.at_step or 0) > step]
        if later:
            due = [r for r in due if r not in later]
            if self.rank == 0:
                core.deliver(later)
        if due:
            self._apply_all(due)

    def idle(self) -> None:
        """Paused: rank 0 reports and waits for a command; the others meet it at the boundary."""
        if self.rank == 0:
            self.t.core.telemetry.report()
            self.t.core.inbox.wait(0.1)

    def _receive(self, size: int) -> list[CommandRecord]:
        """The due commands, from rank 0, as one broadcast of their pickled bytes."""
        return broadcast_records(self._payload, size)

    def _apply_all(self, due: list[CommandRecord]) -> None:
        core = self.t.core
        done = core.apply_records(due)
        # A load moves the step: commands pinned to steps of the branch it starts may be due
        # right there (as with one trainer). Rare: these go by broadcast_object_list.
        while any(r.command is not None and r.command.moves_step for r in due):
            t0 = time.perf_counter()
            box: list[Any] = [core.inbox.due(core.state.step) if self.rank == 0 else None]
            dist.broadcast_object_list(box, src=0)
            self._sync_s += time.perf_counter() - t0
            due = box[0] or []
            done.extend(core.apply_records(due))
        if done and self.rank == 0:
            core.reporter.outcomes(done, core.snapshot(), core.status())
            core.telemetry.report(force=True)

    # -- the step ------------------------------------------------------------------------
    def to_backward(self, loss: torch.Tensor, value: torch.Tensor, micro_batches: int) -> torch.Tensor:
        """The control parameter joins the backward (with a zero weight); what this rank
        says is added to its gradient, and DDP's all-reduce of the gradients carries it."""
        if self._said is None:  # the step's first micro-batch: what rank 0 will broadcast
            t0 = time.perf_counter()
            self._said = self._ask(self.t.core.state.step + 1)  # the boundary after this step
            self._sync_s += time.perf_counter() - t0
        flag, size = self._said
        self._mine = torch.tensor([flag, float(value.float()), size], device=self.control.ctrl.device) / micro_batches
        return loss + 0.0 * self.control.ctrl.sum()

    def after_backward(self) -> None:
        grad = self.control.ctrl.grad
        assert grad is not None
        mean = grad.detach().double().cpu()  # the mean over ranks of what each said
        self._flag, self._size = round(mean[0].item() * self.world), round(mean[2].item() * self.world)
        self._mean_loss = mean[1].item()
        self.control.ctrl.grad = None
        self._said, self._heard_step = None, True

    def after_record(self, row: dict[str, Any]) -> None:
        row["loss/rank0"] = row["loss"]
        row["loss"] = self._mean_loss
        # What delivering commands cost this step: taking them out and pickling them
        # (rank 0) and, at the boundary before it, the broadcast when something was due.
        # Applying them costs what it does with one trainer.
        row["ddp/sync_ms"] = self._sync_s * 1e3
        self._sync_s = 0.0

    def wait_for_data(self) -> None:
        """No rows to draw yet: wait in place (the ranks meet in the next backward)."""
        if self.rank == 0:
            self.t.wait_for_data()
        else:
            time.sleep(0.1)


class _Controlled(torch.nn.Module):
    """The model, plus a control parameter whose gradient carries the ranks' messages."""

    def __init__(self, model: torch.nn.Module, ranks: Ranks) -> None:
        super().__init__()
        self.model = model
        device = next(iter(model.parameters()), torch.zeros(())).device
        self.ctrl = torch.nn.Parameter(torch.zeros(3, device=device))
        self.ctrl.register_hook(lambda g: g + ranks._mine)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)
