"""Steer a Hugging Face ``transformers.Trainer`` with callbacks only::

    import ray_interactive as ri
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=valid)
    ri.hf.steer(trainer, run="exp1")      # or callbacks=[ri.hf.InteractiveCallback(run="exp1")]
    trainer.train()

The front-end itself is :mod:`ray_interactive.train.hf` (no Ray); this is it connected to
the run's controller on Ray (the embedded local cluster, or the one at ``RAY_ADDRESS``).
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from ray_interactive.runtime.inprocess import InProcessRun
from ray_interactive.train import hf as _hf
from ray_interactive.train.hf import HFSchedule, ScheduleLambda

__all__ = ["HFSchedule", "InteractiveCallback", "ScheduleLambda", "steer"]


class InteractiveCallback(_hf.InteractiveCallback):
    """:class:`ray_interactive.train.hf.InteractiveCallback` on Ray: makes the ``Trainer``
    it is given to a steerable run named ``run``."""

    def __init__(self, run: str, **kwargs: Any) -> None:
        kwargs.setdefault("open_run", InProcessRun)
        super().__init__(run, **kwargs)


def steer(trainer: Trainer, run: str, **kwargs: Any) -> _hf.InteractiveCallback:
    """Make ``trainer`` a steerable run named ``run``; an error in ``trainer.train()`` then
    marks the run ``failed`` with it. ``kwargs``: ``RunConfig`` fields, ``replay=``, ``address=``."""
    kwargs.setdefault("open_run", InProcessRun)
    return _hf.steer(trainer, run, **kwargs)
