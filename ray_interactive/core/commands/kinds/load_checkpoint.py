"""``load_checkpoint``: restore a checkpoint and continue from it on a new branch."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator

from ray_interactive.core.commands.base import CHECKPOINT_ID_PATTERN, CommandBase, RunView, check_name, clip

if TYPE_CHECKING:
    from ray_interactive.core.steering import Steering

ROOT_BRANCH = "main"


class LoadCheckpoint(CommandBase):
    """Restore a checkpoint and continue training from it on a new branch."""

    kind: Literal["load_checkpoint"] = "load_checkpoint"
    checkpoint_id: str = Field(max_length=160, description="<branch>@<step>, as the checkpoint list shows it")
    branch: str | None = Field(default=None, description="the new branch's name (default: <branch>-<n>)")

    label: ClassVar[str] = "Load as new branch"
    section: ClassVar[str] = "checkpoints"
    example: ClassVar[str] = "checkpoint_id=main@100 branch=lower-lr"
    for_agents: ClassVar[bool] = True
    moves_step: ClassVar[bool] = True

    @field_validator("checkpoint_id")
    @classmethod
    def _checkpoint_id(cls, v: str) -> str:
        if not re.fullmatch(CHECKPOINT_ID_PATTERN, v):
            raise ValueError(f"{clip(v)!r} is not a checkpoint id (<branch>@<step>, as listed by checkpoints())")
        return v

    @field_validator("branch")
    @classmethod
    def _branch(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v, "branch")

    def check(self, view: RunView) -> LoadCheckpoint:
        # A replayed load may name a checkpoint the replay has yet to write: the trainer
        # checks that one when it applies it.
        future = self.at_step is not None and self.at_step > view.step
        if self.checkpoint_id not in view.checkpoints and not future:
            known = sorted(view.checkpoints)[-5:]
            hint = f"; latest: {', '.join(known)}" if known else "; the run has no checkpoints yet"
            raise ValueError(f"no checkpoint with id {self.checkpoint_id!r}{hint}")
        if self.branch is not None and self.branch in view.branches:
            raise ValueError(f"branch {self.branch!r} already exists; pick a new name")
        if self.branch is None:
            return self.model_copy(update={"branch": new_branch_name(self.checkpoint_id, view.branches)})
        return self

    def accepted(self, view: RunView) -> None:
        assert self.branch is not None
        view.branches.add(self.branch)  # reserved now: two loads can't share it

    def apply(self, run: Steering) -> str:
        info = run.checkpoints.find(self.checkpoint_id)  # by id in this run's tree: never a path
        run.leave_branch()
        parent = run.state.branch
        run.checkpoints.load(info)
        run.state.branch = self.branch or f"{parent}-{run.state.step}"
        run.checkpoints.forked(info)
        run.reporter.branch(run.state.branch, parent, self.checkpoint_id, run.state.step)
        message = f"loaded {self.checkpoint_id} (step {run.state.step}) as branch {run.state.branch}"
        if run.frontend.data is None:
            message += " (the loop's own data stream goes on where it was)"
        if run.weights.following:  # a deployed model following the run moves to the branch
            version = run.weights.try_publish("load_checkpoint")
            message += f"; published weights version {version}" if version else "; publishing its weights failed"
        return message


def new_branch_name(checkpoint_id: str, taken: set[str]) -> str:
    """``<the checkpoint's branch>-<n>``, the first ``n`` not taken."""
    base = checkpoint_id.split("@")[0][:56] or ROOT_BRANCH  # room for "-<n>"
    n = 1
    while f"{base}-{n}" in taken:
        n += 1
    return check_name(f"{base}-{n}", "branch")
