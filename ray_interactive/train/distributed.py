"""Many workers: our trainer on every rank of a Ray Train ``TorchTrainer`` (DDP; gloo on
CPU, NCCL on GPU), steered exactly like one trainer.

**Every rank applies every command at the same optimizer step.** Only rank 0 hears from
the controller (it long-polls :meth:`ControllerActor.pull_commands`). After each backward,
all ranks start one small asynchronous all-reduce of ``[flag, loss, size]``: rank 0 takes
the commands due at the coming boundary out of its inbox and pickles them (``size``: their
bytes), its flag says whether a timed checkpoint is due, and the sum of the losses gives
the mean loss across ranks. It runs while the optimizer steps; at the boundary, only when
``size`` > 0, one broadcast of those bytes reaches every rank and each applies them
there, in order. A step with nothing due costs one 3-float all-reduce, overlapped with the
optimizer step.

**Data**: each rank draws its own deterministic stream from the one buffer actor (its lane,
seeded by rank; disjoint shares of every epoch and of the fresh rows). **Checkpoints** are
written once, by rank 0, with every rank's data position (gathered when it is written,
always at a step all ranks share); a run saved with N workers resumes with N. **Metrics**
are rank 0's, with ``loss`` the mean over ranks (``loss/rank0`` its own).

While paused, the ranks meet every 0.1 s to hear whether something is due (no training).
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import ray
import torch
import torch.distributed as dist

from ray_interactive.core.commands import CommandRecord
from ray_interactive.core.config import RunConfig
from ray_interactive.core.steering import Reporter, finite
from ray_interactive.core.task import load_task
from ray_interactive.data.feeds import RayFeed
from ray_interactive.serve.weights import BackgroundPublisher
from ray_interactive.train.trainer import Feed, Trainer

log = logging.getLogger(__name__)

CHECKPOINT_DUE = 2  # a flag bit: rank 0's clock says a timed checkpoint is due
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


def peer_lost(e: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (not this rank's error)."""
    if isinstance(e, getattr(dist, "DistNetworkError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("Connection reset by peer", "Connection closed by peer", "gloo/transport", "NCCL")
    )


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


class DistributedTrainer(Trainer):
    """:class:`Trainer` on one rank of many; see the module's docstring."""

    def __init__(self, *args: Any, rank: int, world: int, **kwargs: Any) -> None:
        self.rank, self.world = rank, world
        super().__init__(*args, **kwargs)
        fe = self.core.frontend
        fe.name = "ddp"
        fe.unsupported.update(UNSUPPORTED)
        fe.writes_checkpoints = rank == 0
        fe.timed_checkpoints = False  # rank 0 keeps the clock and says so in its flag
        if rank != 0:
            fe.evaluate = None  # rank 0 evaluates; the others go on to the next step's all-reduce
        fe.data = self.data = RankData(self.feed, rank, world, self._fingerprint)
        self.core.on_checkpoint.append(self._check_agreement)
        model = self.core.model
        self.forward_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index or 0] if self.device.type == "cuda" else None
        )
        self._reduce: tuple[Any, torch.Tensor] | None = None
        self._flag = 0  # what the last all-reduce said: rank 0's flag ...
        self._size = 0  # ... and the size of the commands it will broadcast
        self._payload = b""  # rank 0: those commands, pickled
        self._sync_s = 0.0  # time this step spent in the command machinery (the metric ddp/sync_ms)
        self._t_sync = 0.0  # when the current boundary began
        self._row: dict[str, Any] | None = None  # the newest step's row, until its mean loss is known

    def _fingerprint(self) -> dict[str, Any]:
        state = self.core.state
        weights = sum(float(p.detach().double().sum()) for p in self.core.model.parameters())
        lrs = [g["lr"] for g in self.core.optimizer.param_groups]
        return {"step": state.step, "branch": state.branch, "lrs": lrs, "weights": weights,
                "grad_clip": state.grad_clip, "paused": state.paused}

    def _check_agreement(self) -> None:
        why = self.data.disagreement
        if why and self.rank == 0:
            log.error(why)
            self.core.reporter.event("ranks_disagree", why[:2000], self.core.state.step, self.core.state.branch,
                                     failed=True)

    # -- the loop ----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        core, state = self.core, self.core.state
        core.start()
        try:
            while True:
                self._sync()
                if state.stopping:
                    break
                if state.paused:
                    if self.rank == 0:
                        core.report()
                        core.inbox.wait(0.1)
                    continue
                if core.reached_max_steps():
                    break
                batches = self._next_batches()
                while batches is None:  # no rows to draw yet: wait (the ranks meet in the next backward)
                    if self.rank == 0:
                        self._wait_for_data()
                    else:
                        time.sleep(0.1)
                    batches = self._next_batches()
                if self._train_step(batches):
                    core.after_step()
            return core.finish()
        except Exception as e:
            if peer_lost(e):  # another rank died under a collective: the launcher recovers all of them
                log.warning("rank %d: a peer was lost (%s)", self.rank, str(e).splitlines()[0][:200])
                raise
            log.exception("training failed on rank %d", self.rank)
            core.fail(e)
            raise

    def _ask(self, step: int, loss: float) -> torch.Tensor:
        """What this rank adds to the boundary's all-reduce: ``[flag, loss, payload bytes]``.
        Rank 0 takes the commands due at ``step`` out of its inbox now and pickles them;
        every rank learns their size from the sum, and the bytes follow in one broadcast."""
        flag, size = 0, 0
        if self.rank == 0:
            due = self.core.inbox.due(step)
            self._payload = pickle.dumps(due) if due else b""
            size = len(self._payload)
            if self.config.checkpoint_interval_s and self.core.checkpoint_due_by_time():
                flag |= CHECKPOINT_DUE
        return torch.tensor([float(flag), loss, float(size)], dtype=torch.float64)

    def _heard(self, buf: torch.Tensor) -> None:
        self._flag, self._size = int(buf[0].item()), int(buf[2].item())

    def _sync(self) -> None:
        """The step boundary: what rank 0 said is due happens here, on every rank."""
        self._t_sync = time.perf_counter()
        if self._reduce is None:  # paused, or the first step: ask now (a blocking all-reduce)
            buf = self._ask(self.core.state.step, 0.0)
            dist.all_reduce(buf)
            self._heard(buf)
        else:
            self._settle()  # the step just done: its costs go to its row
        self._reduce = None
        t0 = time.perf_counter()  # from here on: the next step's
        flag, size, self._flag, self._size = self._flag, self._size, 0, 0
        try:
            due = self._receive(size) if size else []
        finally:
            self._sync_s += time.perf_counter() - t0
        if flag & CHECKPOINT_DUE:
            self.core.try_checkpoint("periodic")
        # Taken for step + 1, but a skipped (non-finite) step left the count where it was:
        # what is pinned further on goes back to rank 0's inbox, on every rank alike.
        step = self.core.state.step
        later = [r for r in due if r.command is not None and (r.command.at_step or 0) > step]
        if later:
            due = [r for r in due if r not in later]
            if self.rank == 0:
                self.core.inbox.put(later, replayed=True)
        if due:
            self._apply_all(due)

    def _receive(self, size: int) -> list[CommandRecord]:
        """The due commands, from rank 0, as one broadcast of their pickled bytes."""
        data = torch.empty(size, dtype=torch.uint8)
        if self.rank == 0:
            data.copy_(torch.frombuffer(bytearray(self._payload), dtype=torch.uint8))
        dist.broadcast(data, src=0)
        return pickle.loads(data.numpy().tobytes())  # noqa: S301 - our own rank 0's commands

    def _apply_all(self, due: list[CommandRecord]) -> None:
        core = self.core
        done = core._apply(due)
        # A load moves the step: commands pinned to steps of the branch it starts may be due
        # right there (as with one trainer). Rare: these go by broadcast_object_list.
        while any(r.command is not None and r.command.kind == "load_checkpoint" for r in due):
            t0 = time.perf_counter()
            box: list[Any] = [core.inbox.due(core.state.step) if self.rank == 0 else None]
            dist.broadcast_object_list(box, src=0)
            self._sync_s += time.perf_counter() - t0
            due = box[0] or []
            done.extend(core._apply(due))
        if done and self.rank == 0:
            core.reporter.outcomes(done, core.snapshot(), core.status())
            core.report(force=True)

    # -- the step's hooks --------------------------------------------------------------
    def _after_backward(self, loss: torch.Tensor) -> None:
        t0 = time.perf_counter()
        # The boundary after this step comes at step + 1.
        buf = self._ask(self.core.state.step + 1, float(loss.detach().float().item()))
        self._reduce = (dist.all_reduce(buf, async_op=True), buf)
        self._sync_s += time.perf_counter() - t0

    def _finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        # The gradients were all-reduced, so their norm is the same on every rank: every
        # rank skips the same steps (a rank's own loss alone could split them).
        return finite(torch.zeros(()), grad_norm)

    def _before_optimizer_step(self) -> None:
        pass  # commands apply at the step boundary, on every rank at once

    def _after_record(self, row: dict[str, Any]) -> None:
        # The all-reduce finishes while the step is wrapped up and the next batch is
        # taken; the row waits for its mean loss at the next boundary (held back from
        # reports until then).
        self._row = row
        self.core.unsettled_rows = 1

    def _settle(self) -> None:
        """Wait for this step's all-reduce; fill in its row (what delivering commands cost
        the step: this wait, its launch and, when something was due, the broadcast before
        it - applying them costs what it does with one trainer)."""
        assert self._reduce is not None
        work, buf = self._reduce
        work.wait()
        self._heard(buf)
        row, self._row = self._row, None
        if row is not None:
            row["loss/rank0"] = row["loss"]
            row["loss"] = buf[1].item() / self.world
            row["ddp/sync_ms"] = (self._sync_s + time.perf_counter() - self._t_sync) * 1e3
            self.core.unsettled_rows = 0
        self._sync_s = 0.0


def worker_loop(args: dict[str, Any]) -> None:
    """The function every Ray Train worker runs (``train_loop_per_worker``)."""
    logging.basicConfig(level=logging.INFO)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = RunConfig.model_validate(args["config"])
    if torch.cuda.is_available() and cfg.device != "cpu":
        cfg = cfg.model_copy(update={"device": f"cuda:{ctx.get_local_rank()}"})
        torch.cuda.set_device(ctx.get_local_rank())
    controller, buffer = args["controller"], args["buffer"]
    task = load_task(cfg.task.target, cfg.task.kwargs)  # type: ignore[union-attr]

    def feed_factory(position: dict[str, Any] | None) -> RayFeed:
        if position is None:
            position = ray.get(buffer.initial_position.remote(rank, world))
        elif "ranks" in position:
            position = own_position(position, rank, world)
        return RayFeed(buffer, cfg.batch_size, cfg.batches_per_request, cfg.requests_in_flight, position, lane=rank)

    if rank == 0:
        reporter = Reporter(lambda method, *a: getattr(controller, method).remote(*a), ray.get)
        publisher: BackgroundPublisher | None = BackgroundPublisher(
            put=ray.put, report=lambda meta, ref: controller.weights_published.remote(meta, [ref]), wait=ray.get
        )
        next_weight_version = ray.get(controller.next_weight_version.remote())
    else:
        reporter, publisher, next_weight_version = Reporter(lambda *a: None), None, 1
    resume = args.get("resume_from")
    trainer = DistributedTrainer(
        cfg, task, feed_factory, reporter, rank=rank, world=world, next_seq=args["next_seq"],
        resume_from=Path(resume) if resume else None, publisher=publisher, next_weight_version=next_weight_version,
    )
    if args.get("paused") is not None:
        trainer.state.paused = bool(args["paused"])
    stop = threading.Event()
    if rank == 0:
        trainer.core.inbox.put(args.get("records") or [], replayed=True)
        threading.Thread(target=_pull, args=(controller, trainer, args["next_seq"] - 1, stop), daemon=True).start()
    try:
        trainer.run()
    finally:
        stop.set()


def _pull(controller: Any, trainer: DistributedTrainer, after: int, stop: threading.Event) -> None:
    """Rank 0's commands: a long poll of the controller, answered when one is accepted."""
    while not stop.is_set():
        try:
            records: list[CommandRecord] = ray.get(controller.pull_commands.remote(after, 2.0))
        except Exception:  # noqa: BLE001 - the controller restarting: Ray retries; keep asking
            log.warning("fetching commands failed; retrying", exc_info=True)
            stop.wait(0.5)
            continue
        if records:
            trainer.core.inbox.put(records, replayed=True)  # ones held through a recovery are numbered lower
            after = max(after, *(r.seq or 0 for r in records))
        try:
            if not ray.get(controller.snapshot.remote()):  # a restarted controller: describe the run again
                trainer.core.reporter.snapshot(trainer.core.snapshot())
        except Exception:  # noqa: BLE001 - asked again next time
            pass


def fit(config: RunConfig, controller: Any, buffer: Any, next_seq: int, resume_from: str | None,
        records: list[CommandRecord] | None = None, paused: bool | None = None) -> None:
    """Run ``config.workers`` ranks under Ray Train until the run ends (raises if a worker
    fails: the caller recovers)."""
    from ray.train import FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchTrainer

    use_gpu = config.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= config.workers
    run_dir = config.resolved_run_dir
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "config": config.model_dump(mode="json"), "controller": controller, "buffer": buffer,
            "next_seq": next_seq, "resume_from": resume_from, "records": records or [], "paused": paused,
        },
        scaling_config=ScalingConfig(
            num_workers=config.workers, use_gpu=use_gpu, resources_per_worker={"CPU": config.trainer_num_cpus or 0.001}
        ),
        run_config=TrainRunConfig(
            name=f"{config.name}-{int(time.time() * 1000)}", storage_path=str(run_dir / "ray_train"),
            failure_config=FailureConfig(max_failures=0),  # a lost worker: recovered by us, from our checkpoint
        ),
    )
    trainer.fit()
