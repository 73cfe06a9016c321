"""Guarded rollout of published weights to the deployed replicas: plain Python, kept by the
controller.

With ``RunConfig.rollout.enabled`` a newly published version does not reach every replica
at once. It goes to a **canary** (the first ``canary_replicas`` live replicas by name) while
every other replica stays on the **stable** version. A judge (:mod:`ray_interactive.runtime.judge`,
the user's own evaluation function) compares canary and stable; :func:`decide` says whether
the canary is no worse than stable by the guards' margins; the judge's verdict comes back as
a ``promote_version`` or ``rollback_version`` command (``source: system``, with its figures),
so every decision is in the command history. A promoted version becomes stable and every
replica moves to it; a rolled-back one is never offered again. Then the newest published
version (if newer than stable) becomes the next canary. ``pin_version`` holds every replica
on one version by hand (the automatic rollout waits) until ``pin_version`` without a version.

With ``canary_replicas=0`` no replica serves the canary: the judge's evaluation of it
(offline, on its own copy of the model) alone decides, and every replica stays on stable
until then - the choice for a single deployed replica, whose canary would otherwise be all
of its users. A guard ``against="base"`` holds the canary to the replicas' starting weights
(version 0) instead of stable.

Without rollout every replica follows the newest version, as before.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from ray_interactive.core.config import Guard, RolloutConfig
from ray_interactive.core.messages import ReplicaOrders


@dataclass(frozen=True)
class Verdict:
    promote: bool
    reasons: list[str]


def decide(stable: dict[str, float], canary: dict[str, float], guards: dict[str, Guard],
           base: dict[str, float] | None = None) -> Verdict:
    """Promote the canary if, on every guarded figure, it is no worse than its reference
    (stable; ``base``, version 0's figures, for a guard ``against="base"``) by more than the
    guard's margin. A figure missing or not finite on the canary's side rolls it back (an
    evaluation that cannot say is not a pass)."""
    reasons, ok = [], True
    for name, g in sorted(guards.items()):
        ref = g.against
        c, s = canary.get(name), (base or {} if ref == "base" else stable).get(name)
        if c is None or not math.isfinite(c):
            reasons.append(f"{name}: the canary's evaluation gave {c!r}")
            ok = False
            continue
        if s is None or not math.isfinite(s):
            reasons.append(f"{name}: {c:.4g} ({ref} has no figure to compare)")
            continue
        worse = (s - c) if g.better == "higher" else (c - s)
        held = worse <= g.margin
        ok &= held
        sign = ">=" if g.better == "higher" else "<="
        reasons.append(f"{name}: canary {c:.4g} vs {ref} {s:.4g} ({'held' if held else 'failed'}: "
                       f"{sign} {ref} {'-' if g.better == 'higher' else '+'} {g.margin:g})")
    return Verdict(ok, reasons)


@dataclass
class Decision:
    version: int
    action: str  # "promoted", "rolled back", "pinned", "unpinned"
    time: float
    by: str  # the command's source
    figures: dict[str, Any] = field(default_factory=dict)
    message: str = ""


class Rollout:
    """Which version is stable, which one the canary serves, and every decision so far."""

    def __init__(self, config: RolloutConfig | None = None) -> None:
        self.config = config or RolloutConfig()
        self.stable = 0  # 0: the replicas' own weights (nothing promoted yet)
        self.canary: int | None = None
        self.canary_since: float | None = None
        self.pinned: int | None = None
        self.rejected: set[int] = set()
        self.newest = 0  # the newest version published
        self.decisions: list[Decision] = []
        self.figures: dict[int, dict[str, float]] = {}  # version -> the judge's figures

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def published(self, version: int) -> None:
        """A version was published: it becomes the canary if none is being judged."""
        self.newest = max(self.newest, version)
        self._next_canary()

    def _next_canary(self) -> None:
        if not self.enabled or self.pinned is not None or self.canary is not None:
            return
        if self.newest > self.stable and self.newest not in self.rejected:
            self.canary, self.canary_since = self.newest, time.time()

    def orders(self, name: str, alive: list[str]) -> ReplicaOrders:
        """What replica ``name`` serves, given the live replicas' names."""
        if self.pinned is not None:
            return ReplicaOrders(follow=False, version=self.pinned)
        if not self.enabled:
            return ReplicaOrders()
        if self.canary is not None and name in self.canary_names(alive):
            return ReplicaOrders(follow=False, version=self.canary, canary=True)
        return ReplicaOrders(follow=False, version=self.stable)

    def canary_names(self, alive: list[str]) -> list[str]:
        return sorted(alive)[: self.config.canary_replicas] if self.canary is not None else []

    # -- decisions (the commands' effects) -------------------------------------------------
    def promote(self, version: int | None, by: str, figures: dict[str, Any] | None = None) -> str:
        v = self._target(version, "promote")
        self.stable = v
        nxt = self._decided(v, "promoted", by, figures)
        return f"version {v} promoted: every replica serves it now{nxt}"

    def rollback(self, version: int | None, by: str, figures: dict[str, Any] | None = None) -> str:
        v = self._target(version, "roll back")
        self.rejected.add(v)
        nxt = self._decided(v, "rolled back", by, figures)
        return f"version {v} rolled back: the canary serves stable version {self.stable} again{nxt}"

    def _decided(self, v: int, action: str, by: str, figures: dict[str, Any] | None) -> str:
        """The canary's verdict is in: record it, offer the next canary; says which one."""
        self.canary = self.canary_since = None
        self.figures.setdefault(v, {}).update(_numbers(figures))
        self.decisions.append(Decision(v, action, time.time(), by, figures or {}))
        self._next_canary()
        return f"; version {self.canary} is the next canary" if self.canary is not None else ""

    def pin(self, version: int | None, by: str, known: set[int]) -> str:
        if version is None:
            if self.pinned is None:
                raise ValueError("no version is pinned")
            was, self.pinned = self.pinned, None
            self.decisions.append(Decision(was, "unpinned", time.time(), by))
            self._next_canary()
            return (f"version {was} unpinned: " + ("the guarded rollout goes on" if self.enabled
                                                  else "every replica follows the newest version again"))
        if version != 0 and version not in known:
            raise ValueError(f"no weights version {version} is kept; kept: {', '.join(map(str, sorted(known))) or 'none'}")
        self.pinned = version
        self.canary = self.canary_since = None
        self.decisions.append(Decision(version, "pinned", time.time(), by))
        return f"every replica serves version {version} now (pinned: the automatic rollout waits until it is unpinned)"

    def _target(self, version: int | None, what: str) -> int:
        if self.pinned is not None:
            raise ValueError(f"version {self.pinned} is pinned; unpin it (pin_version without a version) first")
        if self.canary is None:
            raise ValueError(f"there is no canary to {what}" + ("" if self.enabled else ": this run has no guarded rollout "
                                                                "(RunConfig.rollout.enabled)"))
        if version is not None and version != self.canary:
            raise ValueError(f"version {version} is not the canary (the canary is version {self.canary})")
        return self.canary

    def keep(self) -> set[int]:
        """Versions the weight registry must not drop: replicas may still need them."""
        return {v for v in (self.stable, self.canary, self.pinned) if v}

    def view(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled, "stable": self.stable, "canary": self.canary, "canary_since": self.canary_since,
            "pinned": self.pinned, "newest": self.newest, "rejected": sorted(self.rejected),
            "guards": {k: g.model_dump() for k, g in self.config.guards.items()},
            "figures": {str(v): f for v, f in self.figures.items()},
            "decisions": [vars(d) for d in self.decisions[-50:]],
        }


def _numbers(figures: dict[str, Any] | None) -> dict[str, float]:
    """The canary's own figures of a verdict (the version decided on)."""
    canary = (figures or {}).get("canary") or {}
    return {k: float(v) for k, v in canary.items() if isinstance(v, (int, float))}
