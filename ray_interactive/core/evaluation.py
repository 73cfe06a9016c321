"""Running a front-end's evaluation and logging it as ``eval/*`` metrics."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ray_interactive.core.reporting import Reporter, Telemetry
    from ray_interactive.core.state import TrainState
    from ray_interactive.core.steering import Frontend

log = logging.getLogger(__name__)


class Evaluator:
    """Runs the front-end's ``evaluate`` (none: evaluation is refused) and records it."""

    def __init__(self, frontend: Frontend, state: TrainState, telemetry: Telemetry, reporter: Reporter) -> None:
        self.frontend, self.state, self.telemetry, self.reporter = frontend, state, telemetry, reporter

    @property
    def available(self) -> bool:
        return self.frontend.evaluate is not None

    def run(self, flag: bool = True) -> dict[str, float]:
        """Evaluate and log ``eval/*``; a non-finite result is flagged (a metric, and with
        ``flag`` an entry in the history: an evaluate command says so in its own outcome)."""
        evaluate = self.frontend.evaluate
        if evaluate is None:
            raise ValueError("this run has no evaluation")
        s = self.state
        with self.telemetry.busy_with("evaluating"):
            results = evaluate()
        metrics = {k if k.startswith("eval/") else f"eval/{k}": float(v) for k, v in results.items()}
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        self.telemetry.add(s.step, {**metrics, "health/eval_non_finite": float(len(bad))})
        if bad:
            message = "evaluation returned non-finite " + ", ".join(f"{k}={v}" for k, v in bad.items())
            log.warning("%s at step %d", message, s.step)
            if flag:
                self.reporter.event("evaluate", message, s.step, s.branch, failed=True)
        self.telemetry.report(force=True)
        return metrics


def evaluate_model(model: torch.nn.Module, evaluate: Callable[[], dict[str, Any]]) -> dict[str, float]:
    """``evaluate()`` with the model in eval mode and no autograd, as floats; the model's
    mode is put back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return {k: float(v) for k, v in evaluate().items()}
    finally:
        model.train(was_training)
