"""The run's checkpoint tree as a training loop keeps it: writing, retention, finding,
loading, and the target of a health rollback. (The files themselves:
:mod:`ray_interactive.core.checkpoints`.)"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

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
from ray_interactive.core.health import nonfinite_tensors

if TYPE_CHECKING:
    from ray_interactive.core.config import RunConfig
    from ray_interactive.core.reporting import Reporter
    from ray_interactive.core.state import TrainState
    from ray_interactive.core.steering import Frontend

log = logging.getLogger(__name__)


class ShardedFiles(Protocol):
    """A model sharded over ranks (FSDP): every rank writes and reads its own shards of
    weights and optimizer state (``ray_interactive.train.sharded``)."""

    def write(self, root: Path, info: CheckpointInfo, doc: dict[str, Any]) -> Path: ...

    def read(self, path: Path) -> dict[str, Any]: ...


class Checkpointer:
    """Writes, prunes, finds and loads the checkpoints of one run.

    ``describe_modules()`` gives the model's module description (their attributes go into
    a checkpoint); ``changed()`` is called when a load changed the model's parameters or
    settings; ``pending_loads()`` names the checkpoints accepted loads will need.
    """

    def __init__(
        self,
        config: RunConfig,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        state: TrainState,
        frontend: Frontend,
        reporter: Reporter,
        device: torch.device,
        *,
        describe_modules: Callable[[], dict[str, Any]],
        changed: Callable[[], None],
        pending_loads: Callable[[], set[str]],
    ) -> None:
        self.config = config
        self.model, self.optimizer, self.state = model, optimizer, state
        self.frontend, self.reporter, self.device = frontend, reporter, device
        self._describe_modules, self._changed, self._pending_loads = describe_modules, changed, pending_loads
        self.dir = config.resolved_run_dir / "checkpoints"
        # The run's checkpoints (id -> info), kept as they are written and removed, and the
        # ones branches were forked from (never removed by the retention policy).
        self.known: dict[str, CheckpointInfo] = {c.id: c for c in list_checkpoints(self.dir)}
        self._removed_parents: dict[str, str | None] = {}  # removed by retention -> their parent
        self._branch_points: set[str] = _branch_points(config.resolved_run_dir)
        self.saved_at: tuple[str, int] | None = None  # (branch, step) of the last one written
        self._clock = time.monotonic()  # when the last checkpoint was written (or the run began)
        self.on_save: list[Callable[[], None]] = []  # after each checkpoint is taken
        self.after_load: list[Callable[[dict[str, Any] | None], None]] = []  # front-ends follow a load
        # Many ranks: add to a checkpoint's document (every rank's RNG) before it is written,
        # and agree afterwards whether it was (an error on any rank is an error on all).
        self.before_write: list[Callable[[dict[str, Any]], None]] = []
        self.after_write: list[Callable[[BaseException | None], BaseException | None]] = []
        self.sharded: ShardedFiles | None = None  # set for a sharded model: every rank writes its shards
        # saved_weights="trainable": the state dict entries checkpoints hold (the rest is the fixed base)
        self.saved_names: set[str] | None = None
        # whether the weights are finite (many ranks: agreed by all, so that all decide alike)
        self.weights_finite: Callable[[], bool] = lambda: not nonfinite_tensors(self.model.named_parameters())

    # -- what a checkpoint holds besides tensors ---------------------------------------
    def doc(self) -> dict[str, Any]:
        """Everything a checkpoint stores besides weights, optimizer state and RNGs: the
        train state, the model's settings (frozen parameters, module attributes) and the
        data position. :meth:`restore` is its inverse."""
        modules = self._describe_modules()
        data = self.frontend.data
        return {
            **self.state.to_checkpoint(),
            "data_position": copy.deepcopy(getattr(data, "checkpoint_position", lambda: data.position)())
            if data is not None else None,
            "frozen": [n for n, p in self.model.named_parameters() if not p.requires_grad],
            "module_attributes": {k: v["attributes"] for k, v in modules.items() if v["attributes"]},
            "paused": self.state.paused,  # not restored by a load; a restarted trainer resumes in this state
        }

    def restore(self, doc: dict[str, Any], reset_data: bool = True) -> None:
        self.state.from_checkpoint(doc)
        frozen = set(doc["frozen"])
        for name, p in self.model.named_parameters():
            p.requires_grad_(name not in frozen)
        for mod_path, attrs in doc["module_attributes"].items():
            module = self.model.get_submodule(mod_path)
            for attr, value in attrs.items():
                setattr(module, attr, value)
        self._changed()
        if reset_data and self.frontend.data is not None and doc.get("data_position") is not None:
            self.frontend.data.reset(doc["data_position"])
        for follow in self.after_load:
            follow(doc)

    # -- writing ---------------------------------------------------------------------------
    def save(self, reason: str, tag: str | None = None) -> str:
        """Write a checkpoint now (rank 0 of many writes; every rank takes part); its id."""
        s = self.state
        info = CheckpointInfo(
            id=checkpoint_id(self.dir, s.branch, s.step),
            branch=s.branch,
            step=s.step,
            created_at=time.time(),
            reason=reason,
            parent=s.last_checkpoint,
            tag=tag,
            finite=self.weights_finite(),  # a rollback skips it if not
        )
        doc = self.doc()  # with many ranks every one takes part (their data positions)
        for extend in self.before_write:
            extend(doc)
        error: BaseException | None = None
        try:
            if self.sharded is not None:
                self.sharded.write(self.dir, info, doc)
            elif self.frontend.writes_checkpoints:
                write_checkpoint(self.dir, info, self.model, self.optimizer, doc, only=self.saved_names)
        except OSError as e:
            error = e
        for agree in self.after_write:
            error = agree(error)
        if error is not None:
            raise error
        self._clock = time.monotonic()
        s.last_checkpoint = info.id
        self.saved_at = (s.branch, s.step)
        self.known[info.id] = info
        self.reporter.checkpoint(info)
        if reason == "periodic" and self.frontend.writes_checkpoints:
            self._prune()
        for follow in self.on_save:
            follow()
        return info.id

    def try_save(self, reason: str) -> str | None:
        """A checkpoint the run takes on its own (periodic, final): one that cannot be
        written (a full disk, say) is an entry in the history with the reason, and
        training goes on; the next one is tried at the next interval."""
        try:
            return self.save(reason)
        except OSError as e:
            self._clock = time.monotonic()
            s = self.state
            message = f"{reason} checkpoint at step {s.step} not written: {type(e).__name__}: {e}"
            log.error(message)
            self.reporter.event("checkpoint_failed", message, s.step, s.branch, failed=True)
            return None

    def due_by_time(self) -> bool:
        interval = self.config.checkpoint_interval_s
        return bool(interval) and time.monotonic() - self._clock >= interval  # type: ignore[operator]

    def _prune(self) -> None:
        """Retention: keep the newest ``checkpoint_keep`` periodic checkpoints of this
        branch; tagged, saved-by-command, final and branch-point ones, the ones pending
        loads name and the rollback target always stay."""
        keep = self.config.checkpoint_keep
        if keep is None:
            return
        periodic = sorted(
            (c for c in self.known.values() if c.branch == self.state.branch and c.reason == "periodic" and c.tag is None),
            key=lambda c: (c.step, c.created_at),
        )
        protected = self._branch_points | self._pending_loads() | {self.state.last_checkpoint, self.rollback_target()}
        removed = [c.id for c in periodic[:-keep] if c.id not in protected]
        for cid in removed:
            shutil.rmtree(self.dir / cid, ignore_errors=True)
            # its parent link stays: later checkpoints' lineage still leads through it
            self._removed_parents[cid] = self.known.pop(cid).parent
        if removed:
            self.reporter.checkpoints_removed(removed)

    # -- finding and loading ---------------------------------------------------------------
    def find(self, cid: str) -> CheckpointInfo:
        """The checkpoint of this run's tree named ``cid`` (looked up by id, never a path)."""
        info = self.known.get(cid)
        if info is None and not self.frontend.writes_checkpoints:  # rank 0 wrote it: read its info
            info = next((c for c in list_checkpoints(self.dir) if c.id == cid), None)
        if info is None or not (self.dir / info.id / "state.json").exists():
            raise ValueError(f"no checkpoint {cid!r} in this run (it may have been removed)")
        return info

    def forked(self, info: CheckpointInfo) -> None:
        """A branch was forked from ``info``: it is never removed by retention."""
        self._branch_points.add(info.id)

    def load(self, where: CheckpointInfo | Path) -> dict[str, Any]:
        """Restore everything from a checkpoint and return what it held besides tensors;
        one that fails half way leaves the run as it was (the backup is the same state a
        checkpoint holds)."""
        path = self.dir / where.id if isinstance(where, CheckpointInfo) else where
        backup = (
            {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            copy.deepcopy(self.optimizer.state_dict()),
            copy.deepcopy(self.doc()),
            capture_rng(),
        )
        try:
            if self.sharded is not None:
                doc = self.sharded.read(path)
            else:
                doc = read_checkpoint(path, self.model, self.optimizer, self.device)
            self.restore(doc)
            self.state.last_checkpoint = path.name
            return doc
        except Exception:
            weights, opt_state, doc, rng = backup
            self.model.load_state_dict(weights)
            self.optimizer.load_state_dict(opt_state)
            self.restore(doc, reset_data=False)
            restore_rng(*rng)
            raise

    def rollback_target(self) -> str | None:
        """The newest checkpoint of this lineage with finite weights that is still on disk."""
        cid, seen = self.state.last_checkpoint, set()
        while cid is not None and cid not in seen:
            seen.add(cid)
            info = self.known.get(cid)
            if info is None:
                cid = self._removed_parents.get(cid)
                continue
            if info.finite and info.step <= self.state.step and (self.dir / cid / "state.json").exists():
                return cid
            cid = info.parent
        return None


def _branch_points(run_dir: Path) -> set[str]:
    """The checkpoints the run's branches were forked from (``branches.json``)."""
    try:
        branches = json.loads((run_dir / "branches.json").read_text())
    except (OSError, ValueError):
        return set()
    return {b["checkpoint"] for b in branches.values() if isinstance(b, dict) and b.get("checkpoint")}
