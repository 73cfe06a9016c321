"""What Hugging Face's own reporting (``TrainingArguments.report_to``) receives after a
``load_checkpoint``: the load rewinds HF's ``global_step``, so without this HF's log history
and its trackers would get the steps past the checkpoint a second time, with no branch.

On a move to a new branch (:func:`follow_branch`):

* ``state.log_history`` keeps only the entries up to the fork step: it then holds the
  current branch's lineage, each step once (the branch left stays in the run's own metrics);
* HF's TensorBoard callback writes the new branch to ``<logging_dir>/<branch>``: a run of
  its own in TensorBoard (the root branch stays in ``logging_dir``);
* HF's MLflow callback logs the new branch into a nested run of its run (tags ``branch``,
  ``parent_branch``, ``fork_step``); :func:`end_branches` ends it when training ends.

Other HF integrations (W&B, ...) get the cleaned log history only: for branches there, use
the run's own ``report_to`` (:mod:`ray_interactive.core.trackers`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def follow_branch(trainer: Any, args: Any, state: Any, branch: str, parent: str, step: int) -> None:
    """The run moved to ``branch``, forked from ``parent`` at ``step`` (HF's step is ``step`` now)."""
    state.log_history[:] = [h for h in state.log_history if h.get("step", 0) <= step]
    if trainer is None:
        return
    for cb in trainer.callback_handler.callbacks:
        kind = type(cb).__name__
        try:
            if kind == "TensorBoardCallback":
                _tensorboard(cb, args, branch, parent, step)
            elif kind == "MLflowCallback":
                _mlflow(cb, branch, parent, step)
        except Exception:  # noqa: BLE001 - HF's reporting must not end the run
            log.exception("could not move HF's %s to branch %s", kind, branch)


def end_branches(trainer: Any) -> None:
    """Training ended: end the nested MLflow run of the last branch (HF ended the run it
    saw as active - the branch's - so its own run is ended here, as HF would have)."""
    if trainer is None:
        return
    for cb in trainer.callback_handler.callbacks:
        if type(cb).__name__ == "MLflowCallback" and getattr(cb, "_ri_branch_run", False):
            cb._ri_branch_run = False
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.end_run()


def _tensorboard(cb: Any, args: Any, branch: str, parent: str, step: int) -> None:
    if getattr(cb, "logging_dir", None) is None:
        return  # not started (another rank): it writes nothing
    base = getattr(cb, "_ri_base_dir", None) or cb.logging_dir
    cb._ri_base_dir = base
    if cb.tb_writer is not None:
        cb.tb_writer.close()
    cb.logging_dir = os.path.join(base, branch)
    cb.tb_writer = None
    cb._init_summary_writer(args)
    if cb.tb_writer is not None:
        cb.tb_writer.add_text("branch", f"branch {branch} continues {parent} from step {step}", step)


def _mlflow(cb: Any, branch: str, parent: str, step: int) -> None:
    if not getattr(cb, "_initialized", False):
        return
    import mlflow

    if getattr(cb, "_ri_branch_run", False):
        mlflow.end_run()  # the nested run of the branch left
    elif mlflow.active_run() is not None:
        mlflow.set_tag("branch", parent)  # HF's own run holds the root branch
    if mlflow.active_run() is None:
        return
    mlflow.start_run(run_name=branch, nested=True,
                     tags={"branch": branch, "parent_branch": parent, "fork_step": str(step)})
    cb._ri_branch_run = True
