"""``publish_weights``: a new weight version for deployed models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ray_interactive.core.commands.base import CommandBase

if TYPE_CHECKING:
    from ray_interactive.core.steering import Steering


class PublishWeights(CommandBase):
    """Publish the current weights as a new version for deployed models (subscribers)."""

    kind: Literal["publish_weights"] = "publish_weights"

    def apply(self, run: Steering) -> str:
        if not run.weights.enabled:
            raise ValueError("this run has no weight publisher")
        version = run.weights.publish("command")
        return f"published weights version {version} at step {run.state.step}"
