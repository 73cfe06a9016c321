"""Sampling policies of the data buffer: small pure functions over numpy generators.

Everything random is drawn from one ``numpy.random.Generator`` whose state is part of the
data position, so a run restored from a checkpoint draws exactly the same batches.
"""

from __future__ import annotations

import zlib

import numpy as np


def effective_weights(weights: dict[str, float], sizes: dict[str, int]) -> dict[str, float]:
    """Normalised weights over the sources that have rows; empty sources get 0.

    When every weighted source is empty, nothing can be drawn and all weights are 0.
    """
    live = {s: w for s, w in weights.items() if w > 0 and sizes.get(s, 0) > 0}
    total = sum(live.values())
    return {s: (live.get(s, 0.0) / total if total > 0 else 0.0) for s in weights}


def draw_counts(rng: np.random.Generator, n: int, weights: dict[str, float]) -> dict[str, int]:
    """How many of ``n`` rows come from each source (multinomial by ``weights``)."""
    names = [s for s, w in weights.items() if w > 0]
    if not names:
        return {}
    p = np.array([weights[s] for s in names], np.float64)
    counts = rng.multinomial(n, p / p.sum())
    return {s: int(c) for s, c in zip(names, counts) if c}


def epoch_permutation(seed: int, source: str, epoch: int, size: int) -> np.ndarray:
    """The shuffled order of a static source's rows in one epoch (a pure function)."""
    return np.random.default_rng([seed, zlib.crc32(source.encode()), epoch]).permutation(size)


def draw_uniform(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    """``k`` row indices uniformly with replacement."""
    return rng.integers(0, size, k)


def draw_recent(rng: np.random.Generator, size: int, k: int, half_life: float) -> np.ndarray:
    """``k`` row indices with replacement, newer rows more likely: the chance of a row
    halves every ``half_life`` rows back from the newest (a geometric distribution; draws
    beyond the oldest row wrap around, which matters only when ``half_life`` is near
    ``size``)."""
    p = 1.0 - 0.5 ** (1.0 / half_life)
    back = (rng.geometric(p, k) - 1) % size
    return (size - 1 - back).astype(np.int64)


def take_fresh(cursor: int, size: int, k: int) -> tuple[np.ndarray, int]:
    """Fresh-first: up to ``k`` rows not yet drawn, from ``cursor`` on, in ingest order.

    Returns those indices and the new cursor; the caller fills the rest by replay.
    """
    n = max(0, min(k, size - cursor))
    return np.arange(cursor, cursor + n, dtype=np.int64), cursor + n
