"""Checking a command against the run it is sent to: a pure function of plain data.

The controller keeps a :class:`RunView` (what the trainer last described about its
optimizer and model, the checkpoints, branches and data sources) and calls
:func:`validate` at submission, so a bad command is rejected with a reason before it
reaches the trainer. The trainer checks again against the live objects when it applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ray_interactive.core.commands import (
    Command,
    CommandRecord,
    CommandStatus,
    Evaluate,
    LoadCheckpoint,
    SetDataMixture,
    UpdateModule,
    UpdateOptimizer,
)
from ray_interactive.core.hparams import validate_update
from ray_interactive.core.modules import validate_module_op


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
    max_steps: int | None = None
    trainable: int | None = None  # trainable parameters (elements) the trainer last reported
    pending_freezes: dict[int, str] = field(default_factory=dict)  # seq -> module, accepted not applied
    unsupported: dict[str, str] = field(default_factory=dict)  # kinds the run's front-end cannot apply -> why


def validate(cmd: Command, view: RunView) -> None:
    """Raise ``ValueError`` with a readable reason if ``cmd`` cannot be accepted."""
    if view.status in ("stopped", "failed"):
        raise ValueError(f"the run has {view.status}; it takes no more commands")
    if view.stopping:
        raise ValueError("the run is stopping; it takes no more commands")
    why = view.unsupported.get(cmd.kind)
    if why is not None:
        raise ValueError(why)
    if cmd.at_step is not None:
        if cmd.at_step < view.step:
            raise ValueError(f"at_step {cmd.at_step} has already passed (the run is at step {view.step})")
        if view.max_steps is not None and cmd.at_step > view.max_steps:
            raise ValueError(f"at_step {cmd.at_step} is past the run's max_steps ({view.max_steps}): it would never apply")
    needs_trainer = isinstance(cmd, (UpdateOptimizer, UpdateModule))
    if needs_trainer and (view.groups is None or view.modules is None):
        raise ValueError("the trainer is still starting; send the command again in a moment")
    if isinstance(cmd, UpdateOptimizer):
        validate_update(view.groups or [], cmd.params, cmd.group)
    elif isinstance(cmd, UpdateModule):
        validate_module_op(view.modules or {}, cmd)
        if cmd.op == "freeze":
            check_something_trains(view.modules or {}, view.trainable, [*view.pending_freezes.values(), cmd.module])
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


def check_something_trains(modules: dict[str, dict[str, Any]], trainable: int | None, frozen: list[str]) -> None:
    """Refuse freezes that, together, would leave no trainable parameter: the last one of
    ``frozen`` is the new command, the others are accepted freezes not yet applied.

    Counts come from the trainer's description of the model; a module nested in another
    frozen one adds nothing. (Parameters shared between two separate modules can make
    this over-count; the trainer checks exactly when it applies a freeze.)"""
    if not trainable:
        return
    paths = set(frozen)
    outer = [p for p in paths if not any(p != q and p.startswith(q + ".") for q in paths)]
    covered = sum(modules.get(p, {}).get("trainable", 0) for p in outer)
    if covered >= trainable:
        others = "" if len(paths) == 1 else f" (with the freeze(s) of {', '.join(sorted(paths - {frozen[-1]}))} not yet applied)"
        raise ValueError(
            f"freezing {frozen[-1]!r} would leave no trainable parameters{others}; unfreeze something first"
        )


def resolve_cancel(records: list[CommandRecord], command_id: str | None, seq: int | None) -> CommandRecord:
    """The accepted, not yet applied command a ``cancel`` names, or ``ValueError`` why not."""
    what = f"#{seq}" if seq is not None else f"id {command_id!r}"
    target = next(
        (r for r in records if r.command is not None and (r.seq == seq if seq is not None else r.id == command_id) and r.seq),
        None,
    )
    if target is None:
        raise ValueError(f"no accepted command with {what}")
    if command_id is not None and seq is not None and (target.id != command_id):
        raise ValueError(f"#{seq} has id {target.id!r}, not {command_id!r}")
    if target.status is not CommandStatus.ACCEPTED:
        step = f" at step {target.applied_step}" if target.applied_step is not None else ""
        raise ValueError(f"#{target.seq} {target.kind} is no longer pending: it was {target.status.value}{step}")
    if target.kind == "cancel":
        raise ValueError("a cancel cannot be cancelled")
    return target


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
    if not sum(merged.values()) > 0:
        raise ValueError("at least one source must keep a weight > 0")
    return merged
