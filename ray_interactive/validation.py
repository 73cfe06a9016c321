"""Checking a command against the run it is sent to: a pure function of plain data.

The controller keeps a :class:`RunView` (what the trainer last described about its
optimizer and model, the checkpoints, branches and data sources) and calls
:func:`validate` at submission, so a bad command is rejected with a reason before it
reaches the trainer. The trainer checks again against the live objects when it applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ray_interactive.commands import (
    Command,
    Evaluate,
    LoadCheckpoint,
    SetDataMixture,
    UpdateModule,
    UpdateOptimizer,
)
from ray_interactive.hparams import validate_update
from ray_interactive.modules import validate_module_op


@dataclass
class RunView:
    """What the controller knows of a run, enough to validate commands."""

    status: str = "starting"
    step: int = 0
    stopping: bool = False
    groups: list[dict[str, Any]] | None = None  # describe_optimizer(); None until the trainer is up
    modules: dict[str, dict[str, Any]] | None = None  # describe_modules()
    has_eval: bool = False
    checkpoints: set[str] = field(default_factory=set)
    branches: set[str] = field(default_factory=set)
    mixture: dict[str, float] | None = None  # source -> weight; None if unknown


def validate(cmd: Command, view: RunView) -> None:
    """Raise ``ValueError`` with a readable reason if ``cmd`` cannot be accepted."""
    if view.status in ("stopped", "failed"):
        raise ValueError(f"the run has {view.status}; it takes no more commands")
    if view.stopping:
        raise ValueError("the run is stopping; it takes no more commands")
    if cmd.at_step is not None and cmd.at_step < view.step:
        raise ValueError(f"at_step {cmd.at_step} has already passed (the run is at step {view.step})")
    needs_trainer = isinstance(cmd, (UpdateOptimizer, UpdateModule))
    if needs_trainer and (view.groups is None or view.modules is None):
        raise ValueError("the trainer is still starting; send the command again in a moment")
    if isinstance(cmd, UpdateOptimizer):
        validate_update(view.groups or [], cmd.params, cmd.group)
    elif isinstance(cmd, UpdateModule):
        validate_module_op(view.modules or {}, cmd)
    elif isinstance(cmd, Evaluate) and not view.has_eval:
        raise ValueError("this task has no evaluation (its Task does not define evaluate())")
    elif isinstance(cmd, LoadCheckpoint):
        # A replayed load may name a checkpoint the replay has yet to write: the trainer
        # checks that one when it applies it.
        future = cmd.at_step is not None and cmd.at_step > view.step
        if cmd.checkpoint_id not in view.checkpoints and not future:
            known = sorted(view.checkpoints)[-5:]
            hint = f"; latest: {', '.join(known)}" if known else "; the run has no checkpoints yet"
            raise ValueError(f"no checkpoint with id {cmd.checkpoint_id!r}{hint}")
        if cmd.branch is not None and cmd.branch in view.branches:
            raise ValueError(f"branch {cmd.branch!r} already exists; pick a new name")
    elif isinstance(cmd, SetDataMixture):
        validate_mixture(view.mixture, cmd.weights)


def validate_mixture(current: dict[str, float] | None, weights: dict[str, float]) -> dict[str, float]:
    """Check new weights against the known sources; return the resulting full mixture."""
    if current is None:
        raise ValueError("the trainer has not reported its data sources yet; try again in a moment")
    unknown = sorted(set(weights) - set(current))
    if unknown:
        raise ValueError(
            f"unknown data source(s) {', '.join(map(repr, unknown))}; sources: {', '.join(current)}"
        )
    merged = {**current, **weights}
    if sum(merged.values()) <= 0:
        raise ValueError("at least one source must keep a weight > 0")
    return merged
