"""The deployed replicas of a run's model, as they report themselves: which version each
serves, whether it is still alive, what it has logged. Plain Python, kept by the controller."""

from __future__ import annotations

import time
from typing import Any

from ray_interactive.core.messages import ReplicaOrders, ReplicaReport
from ray_interactive.core.rollout import Rollout


class Fleet:
    """Replicas by name; one that has not reported for ``stale_s`` is shown as gone (it is
    dropped after ``forget_s``: a replica Serve replaced never reports again)."""

    def __init__(self, rollout: Rollout | None = None, stale_s: float = 10.0, forget_s: float = 300.0) -> None:
        self.rollout = rollout or Rollout()
        self.stale_s = stale_s
        self.forget_s = forget_s
        self.replicas: dict[str, ReplicaReport] = {}
        #: every version each replica has reported serving (a guarded rollout's record)
        self.served: dict[str, set[int]] = {}

    def report(self, rep: ReplicaReport) -> ReplicaOrders:
        self.replicas[rep.name] = rep
        self.served.setdefault(rep.name, set()).add(rep.version)
        self._forget(rep.time)
        return self.orders(rep.name)

    def orders(self, name: str) -> ReplicaOrders:
        return self.rollout.orders(name, [r.name for r in self.alive()])

    def alive(self, now: float | None = None) -> list[ReplicaReport]:
        now = time.time() if now is None else now
        return [r for r in self.replicas.values() if now - r.time <= self.stale_s]

    def view(self, now: float | None = None) -> list[dict[str, Any]]:
        """One row per replica known: its report, ``age_s`` and ``alive``."""
        now = time.time() if now is None else now
        self._forget(now)
        canaries = set(self.rollout.canary_names([r.name for r in self.alive(now)]))
        return [{**r.model_dump(mode="json"), "age_s": round(now - r.time, 1), "alive": now - r.time <= self.stale_s,
                 "canary": r.name in canaries, "versions_served": sorted(self.served.get(r.name, ()))}
                for r in sorted(self.replicas.values(), key=lambda r: r.name)]

    def _forget(self, now: float) -> None:
        for name in [n for n, r in self.replicas.items() if now - r.time > self.forget_s]:
            del self.replicas[name]
            self.served.pop(name, None)
