"""Data mixtures: sampling weights of named sources, checked as a pure function."""

from __future__ import annotations

#: Largest mixture weight (weights are relative; a bound keeps their sum finite).
MAX_WEIGHT = 1e6


def validate_mixture(current: dict[str, float] | None, weights: dict[str, float]) -> dict[str, float]:
    """Check new weights against the known sources; return the resulting full mixture."""
    if current is None:
        raise ValueError("the trainer has not reported its data sources yet; try again in a moment")
    unknown = sorted(set(weights) - set(current))
    if unknown:
        raise ValueError(
            f"unknown data source(s) {', '.join(map(repr, unknown))}; sources: {', '.join(current)}"
        )
    merged = {**current, **weights}
    if not sum(merged.values()) > 0:
        raise ValueError("at least one source must keep a weight > 0")
    return merged
