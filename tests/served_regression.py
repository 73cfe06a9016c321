"""A deployed regression model on Ray Serve, for the guarded-rollout test: each replica
follows the run's weights through a ``ri.ReplicaLink`` and answers with the version it used."""

from __future__ import annotations

from typing import Any

import torch
from ray import serve

import ray_interactive as ri
from ray_interactive.examples.regression import RegressionTask


@serve.deployment(ray_actor_options={"num_cpus": 0})
class RegressionModel:
    def __init__(self, run: str) -> None:
        torch.set_num_threads(1)
        self.model = RegressionTask().build_model().eval()
        self.link = ri.ReplicaLink(run, self.model, report_s=0.5)

    async def predict(self, x: list[float]) -> dict[str, Any]:
        with self.link.lock, torch.inference_mode():
            y = self.model(torch.tensor([x])).item()
            version = self.link.version
        self.link.answered()
        return {"y": y, "version": version, "replica": self.link.name}

    def __del__(self) -> None:
        link = getattr(self, "link", None)
        if link is not None:
            link.close(timeout=5)
