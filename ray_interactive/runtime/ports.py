"""The typed wire over Ray: a training loop's reports, weights and command polls to the
controller actor, by explicit method (no calls by name). Every loop - the Trainer actor,
rank 0 of a worker group, a Hugging Face or plain loop in a driver - is connected with
these, so they all reach the controller the same way."""

from __future__ import annotations

import uuid
from typing import Any

import ray

from ray_interactive.core.link import CommandPuller
from ray_interactive.core.messages import Delivery, Outcomes, Progress, Snapshot
from ray_interactive.core.reporting import Reporter
from ray_interactive.core.steering import Steering
from ray_interactive.core.weights import BackgroundPublisher, WeightVersion


class RayControllerPort:
    """A :class:`~ray_interactive.core.reporting.ControllerPort` over the controller actor's
    handle: fire-and-forget calls whose replies (``ObjectRef`` s) can be waited on."""

    def __init__(self, controller: Any, incarnation: int = 0) -> None:
        self.controller = controller
        self.incarnation = incarnation
        self.poller = uuid.uuid4().hex  # names this port's long polls, to release them

    def progress(self, report: Progress) -> Any:
        return self.controller.trainer_progress.remote(report)

    def outcomes(self, report: Outcomes) -> Any:
        return self.controller.command_outcomes.remote(report)

    def describe(self, snapshot: Snapshot) -> Any:
        return self.controller.trainer_snapshot.remote(snapshot)

    def weights_published(self, version: WeightVersion) -> Any:
        return self.controller.weights_published.remote(version)

    def pull(self, after_seq: int, timeout: float) -> Delivery:
        return ray.get(self.controller.pull_commands.remote(after_seq, timeout, self.incarnation, self.poller))

    def release(self) -> None:
        """Answer this port's long polls from now on (its loop is ending). Not waited for:
        a release stays, so a poll that reaches the controller after it returns at once."""
        self.controller.release_poller.remote(self.poller)


def reporter(controller: Any, incarnation: int = 0) -> Reporter:
    """A loop's reporter to the controller actor (``incarnation``: which start of the trainer)."""
    return Reporter(RayControllerPort(controller), ray.get, incarnation=incarnation)


def publisher(controller: Any) -> BackgroundPublisher:
    """Weights go into the object store (this process owns them) and their versions to the
    controller, on a background thread: the step loop only takes the CPU copy."""
    return BackgroundPublisher(put=ray.put, report=RayControllerPort(controller).weights_published, wait=ray.get)


def puller(controller: Any, core: Steering, after_seq: int, name: str, incarnation: int = 0) -> CommandPuller:
    """A thread feeding ``core`` the commands the controller accepts (not started)."""
    port = RayControllerPort(controller, incarnation)
    return CommandPuller(port.pull, core, after_seq, name, wake=port.release)
