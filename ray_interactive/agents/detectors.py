"""What the rule agent sees in a run's metric history: pure, documented detectors.

Each takes the newest points of a series (oldest first) and says whether its pattern is
there, with the figures that decided it, so a decision can be explained and journalled.
Thresholds are module constants (and arguments), chosen for loss curves logged every step
or every few steps:

* :func:`non_finite` - the newest value is NaN or infinite.
* :func:`diverging` - the loss (averaged over ``SMOOTH`` points) has risen well above its
  best (``DIVERGE_RATIO`` x the window's lowest average) and is still rising: lower the lr,
  from the last good checkpoint.
* :func:`oscillating` - the loss goes up and down from one point to the next (at least
  ``FLIP_RATE`` of consecutive changes flip sign) by a large step (median change at least
  ``SWING`` of the loss), without getting better over the window (the newer half's mean
  less than ``OSC_PROGRESS`` better than the older's, or no better than the noise): lower
  the lr.
* :func:`plateau` - over ``PLATEAU_WINDOW`` points the mean loss of the newer half is less
  than ``PLATEAU_TOL`` better than the older half's, or no better than the noise (twice the
  standard error of the difference): decay the lr.

:func:`diagnose` applies them in that order of urgency and returns the first that fires.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Oscillation: points looked at, share of sign flips between consecutive changes, the
#: median change relative to the loss, and the improvement over the window that excuses it.
OSC_WINDOW, FLIP_RATE, SWING, OSC_PROGRESS = 20, 0.5, 0.05, 0.05
#: Divergence: points looked at, and how far above the window's best the newest must be.
DIVERGE_WINDOW, DIVERGE_RATIO = 20, 1.5
#: Plateau: points looked at, and the relative improvement below which it has stalled.
PLATEAU_WINDOW, PLATEAU_TOL = 50, 0.01


@dataclass(frozen=True)
class Finding:
    """A pattern found in a series: its name, why (in words) and the figures behind it."""

    pattern: str  # "non_finite", "diverging", "oscillating", "plateau"
    reason: str
    figures: dict[str, float] = field(default_factory=dict)


#: Points averaged before divergence and plateau are judged: a per-step minibatch loss is
#: noisy, and its lowest point says more about the noise than about the run.
SMOOTH = 5


def _tail(values: Any, n: int) -> np.ndarray:
    return np.asarray(list(values)[-n:], dtype=np.float64)


def _progress(v: np.ndarray) -> tuple[float, bool]:
    """How much better the newer half of ``v`` is than the older (relative to the level),
    and whether that is more than the noise (twice the standard error of the difference
    of the halves' means): a minibatch loss is noisy, its single points say little."""
    half = len(v) // 2
    old, new = v[:half], v[half:]
    level = abs(float(old.mean())) or 1.0
    diff = float(old.mean()) - float(new.mean())
    se = math.sqrt(float(old.var()) / len(old) + float(new.var()) / len(new))
    return diff / level, diff > 2.0 * se


def _smooth(v: np.ndarray, k: int = SMOOTH) -> np.ndarray:
    """Moving average over ``k`` points (the series itself when it is shorter)."""
    if len(v) < k or k <= 1:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    return (c[k:] - c[:-k]) / k


def non_finite(values: Any) -> Finding | None:
    v = _tail(values, 1)
    if len(v) and not math.isfinite(v[-1]):
        return Finding("non_finite", f"the newest loss is {v[-1]}", {"loss": float(v[-1])})
    return None


def diverging(values: Any, window: int = DIVERGE_WINDOW, ratio: float = DIVERGE_RATIO) -> Finding | None:
    v = _tail(values, window)
    v = v[np.isfinite(v)]
    if len(v) < max(4, window // 2):
        return None
    m = _smooth(v)
    best, last = float(m.min()), float(m[-1])
    rising = len(m) >= 2 * SMOOTH and last > float(m[-SMOOTH])
    if best > 0 and last >= ratio * best and rising:
        return Finding("diverging", f"the loss rose to {last:.4g}, {last / best:.1f}x its best of {best:.4g} in the "
                       f"last {len(v)} points, and is still rising", {"loss": last, "best": best, "ratio": last / best})
    return None


def oscillating(
    values: Any, window: int = OSC_WINDOW, flip_rate: float = FLIP_RATE, swing: float = SWING,
    progress: float = OSC_PROGRESS,
) -> Finding | None:
    v = _tail(values, window)
    if len(v) < window or not np.all(np.isfinite(v)):
        return None
    d = np.diff(v)
    flips = float(np.mean(np.sign(d[1:]) != np.sign(d[:-1])))
    level = float(np.median(np.abs(v)))
    rel = float(np.median(np.abs(d))) / level if level > 0 else 0.0
    gain, significant = _progress(v)
    if flips >= flip_rate and rel >= swing and (gain < progress or not significant):
        return Finding("oscillating", f"the loss flips direction on {flips:.0%} of steps by a median {rel:.0%} of its "
                       f"level, and the newer half is {gain:+.1%} against the older"
                       f"{'' if significant else ' (within the noise)'}",
                       {"flip_rate": flips, "swing": rel, "progress": gain})
    return None


def plateau(values: Any, window: int = PLATEAU_WINDOW, tol: float = PLATEAU_TOL) -> Finding | None:
    v = _tail(values, window)
    if len(v) < window or not np.all(np.isfinite(v)):
        return None
    half = len(v) // 2
    gain, significant = _progress(v)
    if gain < tol or not significant:
        return Finding("plateau", f"the mean loss of the newest {len(v) - half} points is {gain:+.1%} against the "
                       f"{half} before ({'less than ' + format(tol, '.0%') + ' better' if significant else 'within the noise'})",
                       {"progress": gain})
    return None


def diagnose(values: Any) -> Finding | None:
    """The most urgent pattern in a loss history (oldest first), or None."""
    for detect in (non_finite, diverging, oscillating, plateau):
        found = detect(values)
        if found is not None:
            return found
    return None
