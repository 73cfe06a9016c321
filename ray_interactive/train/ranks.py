"""Hugging Face and plain loops on many ranks (torchrun, accelerate, a Ray Train worker
function): one run per job, steered alike on every rank. Only ``torch.distributed``.

Rank 0 owns the run (its controller, log, metrics, checkpoints); the other ranks attach
to it with a :class:`FollowerRun` (no controller, no Ray). At each control point the
ranks meet in :meth:`Ranks.exchange`, one ``all_reduce`` of four numbers on a gloo group
(the job's own when it is gloo) - the size of rank 0's new commands, its flags, the loss
sum and count - and, only when rank 0 has commands, one broadcast of their
pickled bytes. Every rank then holds the same commands, and its steering core applies
them at the same optimizer step (see :mod:`ray_interactive.core.ranks`).

Checkpoints are written once, by rank 0, with every rank's RNG states in them; each rank
restores its own when one is loaded (a load is a command: every rank applies it at the
same step, from the same files). Whether a checkpoint was written is agreed by all.
"""

from __future__ import annotations

import base64
import logging
import os
import pickle
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ray_interactive.core.checkpoints import capture_rng, restore_rng
from ray_interactive.core.commands import CommandRecord
from ray_interactive.core.config import RunConfig
from ray_interactive.core.link import OpenRun, RunLink
from ray_interactive.core.ranks import Exchanged
from ray_interactive.core.reporting import Reporter
from ray_interactive.core.steering import Steering

log = logging.getLogger(__name__)

__all__ = ["FollowerRun", "LauncherTerminated", "RankLost", "Ranks", "broadcast_records", "own_module", "peer_lost",
           "ranks_of_this_process", "without_controller"]


class LauncherTerminated(SystemExit):
    """SIGTERM from the launcher: torchrun ends every rank when one fails (or it is stopped)."""


class RankLost(RuntimeError):
    """A collective failed because another rank of the job is gone."""


def peer_lost(e: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (not this rank's error)."""
    if isinstance(e, getattr(dist, "DistNetworkError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(
        s in text for s in ("Connection reset by peer", "Connection closed by peer", "gloo/transport", "NCCL")
    )


def ranks_of_this_process() -> tuple[int, int] | None:
    """``(rank, world)`` when this process is one of several in an initialised process
    group (torchrun, accelerate, Ray Train); None when it is alone."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    return (dist.get_rank(), world) if world > 1 else None


def broadcast_records(payload: bytes, size: int, src: int = 0, group: Any = None) -> list[CommandRecord]:
    """Command records pickled on ``src`` (``payload``, ``size`` bytes; elsewhere ignored),
    as one broadcast of their bytes; every rank gets them."""
    data = torch.empty(size, dtype=torch.uint8)
    if dist.get_rank() == src:
        data.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    dist.broadcast(data, src=src, group=group)
    return pickle.loads(data.numpy().tobytes())  # noqa: S301 - our own rank 0's commands


@dataclass
class FollowerRun:
    """The run as a rank other than 0 holds it: no controller (rank 0's reports speak for
    the run), commands only through the exchange."""

    next_seq: int
    resume_from: Path | None
    reporter: Reporter = None  # type: ignore[assignment]
    publisher: None = None
    next_weight_version: int = 1

    def __post_init__(self) -> None:
        self.reporter = Reporter(None)

    def replay(self, source_dir: str | Path) -> int:
        return 0  # rank 0 submits the replay; its commands reach this rank through the exchange

    def connect(self, core: Steering) -> None:
        pass

    def client(self) -> Any:
        raise RuntimeError(f"a run's client is rank 0's (this is rank {dist.get_rank()}): use ri.connect(name) instead")

    def close(self) -> None:
        pass


class Ranks:
    """This process as one rank of many steering one run (see the module doc)."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world
        # Our messages are small CPU tensors: the job's own group when it is gloo (a group of
        # our own would be one more rendezvous, and torch 2.13's torchrun restarts race in
        # those), a gloo group of our own beside NCCL.
        self.group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
        self._pending: tuple[Any, torch.Tensor, bytes] | None = None  # the exchange in flight
        self.ending = False  # the front-end is reporting the run's end: a SIGTERM waits for it
        self._watch_termination()

    @classmethod
    def of_this_process(cls) -> Ranks | None:
        found = ranks_of_this_process()
        return None if found is None else cls(*found)

    def _watch_termination(self) -> None:
        """When one rank dies torchrun SIGTERMs the others: make that an error the front-end
        reports (the run is ``failed`` with the reason, not left ``running``). Only where
        nobody else handles SIGTERM."""
        current = signal.getsignal(signal.SIGTERM)
        # Ray's driver handler (rank 0) only exits: ours does the same, unless the run's end is
        # being reported, which it lets finish (else the run would be left "running")
        ours = current in (signal.SIG_DFL, None) or getattr(current, "__module__", "").startswith("ray.")
        if threading.current_thread() is threading.main_thread() and ours:
            signal.signal(signal.SIGTERM, self._terminated)

    def _terminated(self, signum: int, frame: Any) -> None:
        if self.ending:  # already reporting the end: let it finish (the launcher's grace period)
            return
        self.ending = True
        raise LauncherTerminated(self._sigterm_message())

    def _sigterm_message(self) -> str:
        return f"rank {self.rank}: terminated by SIGTERM - the launcher is ending the job (another rank failed, " \
               "or the job was stopped)"

    def failure(self, error: BaseException) -> BaseException:
        """The error to report the run's end with: a lost peer says so."""
        self.ending = True
        if isinstance(error, SystemExit) and not isinstance(error, LauncherTerminated) and error.code == signal.SIGTERM:
            # Ray's own SIGTERM handler (rank 0 runs Ray) exits with the signal's number
            return LauncherTerminated(self._sigterm_message())
        if peer_lost(error):
            return RankLost(f"another rank of this job is gone (killed, or it crashed): {str(error)[:500]}")
        return error

    # -- opening the run -------------------------------------------------------------------
    def open(self, open_run: OpenRun, config: RunConfig, address: str | None, resume: bool = False,
             resume_from: str | None = None) -> RunLink:
        """Rank 0 opens the run's controller; every other rank learns where the command
        numbers start and which checkpoint the run continues from (or rank 0's error)."""
        box: list[Any] = [None]
        link: RunLink | None = None
        if self.rank == 0:
            try:
                link = open_run(config, address, resume=resume, resume_from=resume_from)
                box = [("ok", link.next_seq, None if link.resume_from is None else str(link.resume_from))]
            except BaseException as e:
                box = [("error", f"{type(e).__name__}: {e}", None)]
                dist.broadcast_object_list(box, src=0, group=self.group)
                raise
        dist.broadcast_object_list(box, src=0, group=self.group)
        if link is not None:
            self._watch_termination()  # again: opening the run started Ray, which set its own
            return link
        what, value, resume_path = box[0]
        if what == "error":
            raise RuntimeError(f"rank 0 could not open run {config.name!r}: {value}")
        return FollowerRun(next_seq=int(value), resume_from=Path(resume_path) if resume_path else None)

    def attach(self, core: Steering) -> None:
        """Make ``core`` one rank of many (before :meth:`Steering.start` and any load). A model
        sharded with FSDP2 has its checkpoints written by every rank (``sharded``)."""
        from ray_interactive.train.sharded import SHARDED_UNSUPPORTED, ShardedCheckpoints, is_sharded

        core.attach_ranks(self)
        if is_sharded(core.model):
            core.checkpoints.sharded = ShardedCheckpoints(core.model, core.optimizer, self.rank, self.group)
            core.frontend.unsupported.update(SHARDED_UNSUPPORTED)
        core.checkpoints.before_write.append(self._add_rngs)
        core.checkpoints.after_write.append(self._agree_written)
        core.checkpoints.after_load.append(self._restore_rng)

    # -- checkpoints -----------------------------------------------------------------------
    def _add_rngs(self, doc: dict[str, Any]) -> None:
        mine = base64.b64encode(pickle.dumps(capture_rng())).decode()
        every: list[Any] = [None] * self.world
        dist.all_gather_object(every, mine, group=self.group)
        doc["ranks_rng"] = every

    def _agree_written(self, error: BaseException | None) -> BaseException | None:
        failed = torch.tensor([0.0 if error is None else 1.0])
        dist.all_reduce(failed, group=self.group)
        if error is None and failed.item() > 0:
            return OSError("the checkpoint was not written (rank 0 could not write it)")
        return error

    def _restore_rng(self, doc: dict[str, Any] | None) -> None:
        rngs = (doc or {}).get("ranks_rng")
        if not rngs or len(rngs) != self.world:  # another world size: rank 0's states (a fresh start for the rest)
            return
        restore_rng(*rank_rng(rngs[self.rank]))

    def agree(self, ok: bool) -> bool:
        flag = torch.tensor([0.0 if ok else 1.0])
        dist.all_reduce(flag, group=self.group)
        return flag.item() == 0

    # -- the control point ---------------------------------------------------------------
    def exchange(self, records: list[CommandRecord], flags: int, loss: float | None, pipelined: bool = False) -> list[Exchanged]:
        done = self.finish()
        payload = pickle.dumps(records) if self.rank == 0 and records else b""
        buf = torch.tensor([len(payload), flags if self.rank == 0 else 0, 0.0 if loss is None else loss,
                            0.0 if loss is None else 1.0], dtype=torch.float64)
        self._pending = (dist.all_reduce(buf, group=self.group, async_op=True), buf, payload)
        if not pipelined:
            done += self.finish()
        return done

    def finish(self) -> list[Exchanged]:
        """Wait for the exchange in flight; then, only if rank 0 had commands, one broadcast
        of their bytes."""
        if self._pending is None:
            return []
        work, buf, payload = self._pending
        self._pending = None
        work.wait()
        size, flags, loss_sum, losses = buf.tolist()
        got = broadcast_records(payload, int(size), group=self.group) if size else []
        return [Exchanged(records=got, flags=int(flags), mean_loss=loss_sum / losses if losses else None)]


def own_module(model: Any) -> Any:
    """The user's model inside a DDP (or FSDP1) wrapper - HF hands callbacks the wrapped one
    on many ranks: checkpoints hold its own parameter names. FSDP2 shards in place."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) and type(model).__name__ in (
        "DistributedDataParallel", "FullyShardedDataParallel") else model


def without_controller(checkpoint: Path | None = None) -> OpenRun:
    """An ``open_run`` that opens no controller (continuing from ``checkpoint`` if given): the
    loop is steered only by what is handed to its core (``core.deliver``). For tests and
    benchmarks of the ranks without Ray."""

    def open_run(config: RunConfig, address: str | None, resume: bool = False,
                 resume_from: str | None = None) -> RunLink:
        return FollowerRun(next_seq=1, resume_from=checkpoint)

    return open_run


def rank_rng(saved: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """One rank's RNG states as a checkpoint holds them (``ranks_rng``)."""
    return pickle.loads(base64.b64decode(saved))  # noqa: S301 - our own checkpoint


def launcher_rank() -> int | None:
    """This process's rank as its launcher says (before the process group exists)."""
    value = os.environ.get("RANK")
    return int(value) if value is not None and os.environ.get("WORLD_SIZE", "1") != "1" else None
