"""The mixture agent: data mixture weights steered by per-source evaluations.

At each evaluation it compares the sources' own figures (``track``: source -> an eval
metric, e.g. ``{"base": "eval/base/loss", "rare": "eval/rare/loss"}``) and moves weight
toward the sources that lag and away from those that are doing well, multiplicatively and
bounded: every tracked source keeps at least ``floor`` and at most ``cap`` of the tracked
sources' total, so none starves and none takes over; the untracked sources keep their
weights. :func:`shift_mixture` is the whole policy, a pure function.
"""

from __future__ import annotations

import math
from typing import Any

from ray_interactive.agents.runtime import Decision, Observation


def shift_mixture(
    weights: dict[str, float], lags: dict[str, float], rate: float = 0.5, floor: float = 0.05, cap: float = 0.8,
) -> dict[str, float]:
    """New weights for the sources in ``lags`` (how far each lags: higher = worse, any
    scale). Each weight is multiplied by ``exp(rate * z)``, ``z`` its lag standardised
    over the tracked sources, then the tracked sources' shares are clamped to
    ``[floor, cap]`` of their total, which stays as it was. Sources not in ``lags`` are
    returned unchanged."""
    if not 0 < rate <= 5:
        raise ValueError(f"rate must be in (0, 5], not {rate}")
    names = [s for s in lags if s in weights]
    if len(names) < 2:
        raise ValueError(f"steering a mixture needs at least two tracked sources with a weight, not {names}")
    if not 0 <= floor < 1 / len(names) < cap <= 1:
        raise ValueError(f"bounds must satisfy 0 <= floor < 1/{len(names)} < cap <= 1 (floor {floor}, cap {cap})")
    vals = [lags[s] for s in names]
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"a tracked source's figure is not finite: {dict(zip(names, vals))}")
    total = sum(weights[s] for s in names)
    if not total > 0:
        raise ValueError("the tracked sources have no weight to share")
    mean = sum(vals) / len(vals)
    spread = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))
    z = {s: (lags[s] - mean) / spread if spread > 0 else 0.0 for s in names}
    raw = {s: max(weights[s], 1e-9 * total) * math.exp(rate * z[s]) for s in names}
    shares = _clamp({s: v / sum(raw.values()) for s, v in raw.items()}, floor, cap)
    return {**weights, **{s: shares[s] * total for s in names}}


def _clamp(shares: dict[str, float], floor: float, cap: float) -> dict[str, float]:
    """Shares moved into ``[floor, cap]`` and summing to 1, as ``clip(share * k)`` for the one
    scale ``k`` that makes them sum to 1 (found by bisection: the sum grows with ``k`` from
    ``n * floor`` < 1 to ``n * cap`` > 1), so their order is kept."""
    def total(k: float) -> float:
        return sum(min(cap, max(floor, v * k)) for v in shares.values())

    lo, hi = 0.0, 1.0
    for _ in range(2000):  # every share is > 0 (shift_mixture sees to it): the sum reaches 1
        if total(hi) >= 1.0:
            break
        hi *= 2.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) < 1.0 else (lo, mid)
    out = {s: min(cap, max(floor, v * hi)) for s, v in shares.items()}
    norm = sum(out.values())
    return {s: v / norm for s, v in out.items()}


class MixturePolicy:
    """A policy for :class:`~ray_interactive.agents.runtime.AgentRunner` (best run at each
    evaluation, ``at_eval=True``): shift the mixture toward the tracked sources that lag.

    ``higher_is_better``: the tracked metrics are scores (a success rate) rather than losses.
    Acts only when the shares would move by more than ``min_change`` (absolute)."""

    name = "mixture"

    def __init__(self, track: dict[str, str], higher_is_better: bool = False, rate: float = 0.5,
                 floor: float = 0.05, cap: float = 0.8, min_change: float = 0.01) -> None:
        if len(track) < 2:
            raise ValueError(f"track at least two sources (source -> eval metric), not {track}")
        shift_mixture(dict.fromkeys(track, 1.0), {s: float(i) for i, s in enumerate(track)}, rate, floor, cap)  # bounds
        self.track, self.higher_is_better = dict(track), higher_is_better
        self.rate, self.floor, self.cap, self.min_change = rate, floor, cap, min_change

    def metric_keys(self) -> list[str]:
        return sorted(set(self.track.values()))

    def decide(self, obs: Observation) -> Decision:
        if obs.status not in ("running", "paused"):
            return Decision(rationale=f"nothing to do while the run is {obs.status}")
        missing = [m for m in self.track.values() if m not in obs.evals]
        if missing:
            return Decision(rationale=f"waiting for the evaluation to report {', '.join(missing)}")
        unknown = [s for s in self.track if s not in obs.mixture]
        if unknown:
            return Decision(rationale=f"the run has no source(s) {', '.join(unknown)}: nothing to steer")
        figures = {s: obs.evals[m] for s, m in self.track.items()}
        lags = {s: -v if self.higher_is_better else v for s, v in figures.items()}
        new = shift_mixture(obs.mixture, lags, self.rate, self.floor, self.cap)
        tracked_total = sum(obs.mixture[s] for s in self.track)
        moved = max(abs(new[s] - obs.mixture[s]) / tracked_total for s in self.track)
        shown = ", ".join(f"{s} {figures[s]:.4g}" for s in self.track)
        finding: dict[str, Any] = {"figures": figures, "before": {s: obs.mixture[s] for s in self.track},
                                   "after": {s: new[s] for s in self.track}}
        if moved < self.min_change:
            return Decision(rationale=f"the sources are even enough ({shown}): mixture kept", finding=finding)
        worst = max(lags, key=lambda s: lags[s])
        change = ", ".join(f"{s} {obs.mixture[s]:.3g}->{new[s]:.3g}" for s in self.track)
        return Decision([{"kind": "set_data_mixture", "weights": {s: new[s] for s in self.track}}],
                        f"{worst} lags ({shown}): more of it, bounded to {self.floor:g}-{self.cap:g} of the tracked "
                        f"share ({change})", finding)


__all__ = ["MixturePolicy", "shift_mixture"]
