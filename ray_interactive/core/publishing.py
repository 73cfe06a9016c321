"""Publishing a run's weights as numbered versions for deployed models to follow."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch

from ray_interactive.core.health import nonfinite_tensors
from ray_interactive.core.weights import Publisher, WeightVersion, pack_state

if TYPE_CHECKING:
    from ray_interactive.core.reporting import Reporter
    from ray_interactive.core.state import TrainState

log = logging.getLogger(__name__)


class WeightPublishing:
    """Takes a CPU copy of the weights and hands it to a :class:`Publisher` (which puts it
    in the object store off the step loop); None: the run publishes nothing."""

    def __init__(self, publisher: Publisher | None, model: torch.nn.Module, state: TrainState, reporter: Reporter,
                 *, next_version: int = 1, publish_every: int | None = None) -> None:
        self.publisher = publisher
        self.model, self.state, self.reporter = model, state, reporter
        self.next_version = next_version
        self.publish_every = publish_every
        self.published_at: tuple[str, int] | None = None  # (branch, step) of the last version
        self.saved_names: set[str] | None = None  # saved_weights="trainable": only these entries travel

    @property
    def enabled(self) -> bool:
        return self.publisher is not None

    @property
    def following(self) -> bool:
        """Whether deployed models follow this run (it publishes periodically, or has published)."""
        return self.publisher is not None and bool(self.publish_every or self.published_at is not None)

    def publish(self, reason: str) -> int:
        """Publish the current weights; returns the version number (``ValueError`` if a
        weight is not finite: such weights never reach a deployed model)."""
        if self.publisher is None:
            raise ValueError("this run has no weight publisher")
        t0, now = time.perf_counter(), time.time()
        names = self.saved_names
        state = self.model.state_dict() if names is None else {
            k: v for k, v in self.model.state_dict().items() if k in names}
        bad = nonfinite_tensors(state.items())
        if bad:
            raise ValueError(
                f"not published: the weights are not finite ({len(bad)} tensor(s) hold NaN or inf, e.g. {bad[0]!r})"
            )
        packed = pack_state(state)
        version = WeightVersion(
            version=self.next_version, step=self.state.step, branch=self.state.branch, time=now, reason=reason,
            num_params=packed.num_params, nbytes=packed.nbytes,
            hold_s=time.perf_counter() - t0,  # the copy (the publisher adds any wait for room)
            partial=names is not None,
        )
        self.publisher.publish(version, packed)
        self.next_version += 1
        self.published_at = (self.state.branch, self.state.step)
        return version.version

    def try_publish(self, reason: str) -> int | None:
        """:meth:`publish`, logging instead of raising: publishing never stops training."""
        if self.publisher is None:
            return None
        try:
            return self.publish(reason)
        except Exception as e:
            log.exception("publishing weights (%s) failed at step %d", reason, self.state.step)
            self.reporter.event("publish_weights", f"{reason} publish failed: {e}"[:2000], self.state.step,
                                self.state.branch, failed=True)
            return None

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until every version has reached the controller."""
        if self.publisher is not None:
            self.publisher.flush(timeout=timeout)
