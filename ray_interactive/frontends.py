"""Steer a training loop of your own: the plain-loop front-end
(:mod:`ray_interactive.train.loop`, no Ray) connected to its run's controller on Ray::

    import ray_interactive as ri

    with ri.steer("exp2", model, optimizer, max_steps=1000) as s:
        while s.running:
            loss = model(next(batches)).loss
            loss.backward()
            s.step(loss=loss)
"""

from __future__ import annotations

from typing import Any

import torch

from ray_interactive.runtime.inprocess import InProcessRun
from ray_interactive.train import loop as _loop

__all__ = ["steer"]


def steer(run: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, **kwargs: Any) -> _loop.Session:
    """A :class:`~ray_interactive.train.loop.Session` for the run named ``run``, on Ray; use
    it as a context manager. ``kwargs``: those of :func:`ray_interactive.train.loop.steer`
    (``evaluate=``, ``replay=``, ``address=``, any ``RunConfig`` field)."""
    kwargs.setdefault("open_run", InProcessRun)
    return _loop.steer(run, model, optimizer, **kwargs)
