"""The data buffer: named sources of Arrow rows and mixture sampling of training batches.

This first version keeps rows in memory; durability on disk is the live-data-path's work.
Static sources (a base dataset) are registered whole; live sources grow by ``ingest``.
Batches hold the columns every source shares (the *batch columns*), so a batch mixes rows
of several sources. The sampler's whole state (generator, epoch cursors, weights) is the
*data position*: it comes with every batch and goes into every checkpoint.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ray_interactive.commands import check_name
from ray_interactive.sampling import draw_counts, draw_uniform, effective_weights, epoch_permutation
from ray_interactive.schemas import conform
from ray_interactive.task import DataSource
from ray_interactive.validation import validate_mixture

log = logging.getLogger(__name__)


@dataclass
class BatchChunk:
    """``len(positions)`` consecutive batches of ``batch_size`` rows in one table.

    ``positions[i]`` is the data position right after batch ``i``; ``meta[i]`` says where
    its rows came from and how old the live ones are.
    """

    table: pa.Table
    batch_size: int
    positions: list[dict[str, Any]]
    meta: list[dict[str, Any]]


@dataclass
class _Source:
    name: str
    schema: pa.Schema
    policy: str
    live: bool
    chunks: list[pa.Table] = field(default_factory=list)
    times: list[np.ndarray] = field(default_factory=list)  # ingest time of each row
    rows: int = 0
    rejected: int = 0
    _table: pa.Table | None = None
    _times: np.ndarray | None = None

    def table(self) -> pa.Table:
        if self._table is None or self._table.num_rows != self.rows:
            self._table = pa.concat_tables(self.chunks) if self.chunks else self.schema.empty_table()
            self._times = np.concatenate(self.times) if self.times else np.empty(0)
        return self._table

    def ingest_times(self) -> np.ndarray:
        self.table()
        assert self._times is not None
        return self._times


class DataBuffer:
    """Sources, ingestion with schema checks, and deterministic mixture sampling."""

    def __init__(self, sources: list[DataSource], seed: int = 0, mixture: dict[str, float] | None = None) -> None:
        self.seed = seed
        self._sources: dict[str, _Source] = {}
        self._weights: dict[str, float] = {}
        for s in sources:
            self.register(s)
        if mixture:
            self._weights = validate_mixture(self._weights, mixture)
        self._rng = np.random.default_rng(seed)
        self._cursors: dict[str, list[int]] = {}  # epoch source -> [epoch, position]
        self._perms: dict[tuple[str, int], np.ndarray] = {}
        self._batches = 0
        self.batch_columns = self._common_columns()

    # -- sources -----------------------------------------------------------------------
    def register(self, source: DataSource) -> None:
        """Add a source; a static one brings its rows, a live one starts empty."""
        check_name(source.name, "source")
        if source.name in self._sources:
            raise ValueError(f"source {source.name!r} is already registered")
        schema = source.resolved_schema()
        s = _Source(source.name, schema, source.policy, live=source.table is None)
        if source.table is not None:
            table = conform(source.table, schema, source.name)
            s.chunks.append(table)
            s.times.append(np.full(table.num_rows, time.time()))
            s.rows = table.num_rows
        self._sources[source.name] = s
        self._weights[source.name] = float(source.weight)
        self.batch_columns = self._common_columns()

    def _common_columns(self) -> list[str]:
        schemas = [s.schema for s in self._sources.values()]
        if not schemas:
            return []
        common = [f.name for f in schemas[0] if all(sc.get_field_index(f.name) >= 0 for sc in schemas)]
        for name in common:
            types = {str(sc.field(name).type) for sc in schemas}
            if len(types) > 1:
                raise ValueError(f"column {name!r} has different types across sources: {', '.join(sorted(types))}")
        if not common:
            raise ValueError("the data sources share no column, so no batch can mix them")
        return common

    def sources(self) -> dict[str, dict[str, Any]]:
        """Per source: rows, weight, policy, whether it is live, its schema."""
        return {
            name: {
                "rows": s.rows,
                "weight": self._weights[name],
                "policy": s.policy,
                "live": s.live,
                "rejected": s.rejected,
                "schema": str(s.schema),
            }
            for name, s in self._sources.items()
        }

    # -- ingestion ---------------------------------------------------------------------
    def ingest(self, table: pa.Table | pa.RecordBatch, source: str) -> dict[str, Any]:
        """Check ``table`` against the source's schema and add its rows.

        Raises ``ValueError`` (nothing stored) for an unknown source or a table that does
        not fit. Returns ``{"source", "rows", "first", "last"}``: the rows' sequence range.
        """
        s = self._sources.get(source)
        if s is None:
            raise ValueError(f"unknown source {source!r}; sources: {', '.join(self._sources)}")
        try:
            clean = conform(table, s.schema, source)
        except ValueError:
            s.rejected += 1
            raise
        first = s.rows
        s.chunks.append(clean)
        s.times.append(np.full(clean.num_rows, time.time()))
        s.rows += clean.num_rows
        return {"source": source, "rows": clean.num_rows, "first": first, "last": s.rows - 1}

    # -- mixture -----------------------------------------------------------------------
    def mixture(self) -> dict[str, float]:
        return dict(self._weights)

    def set_mixture(self, weights: dict[str, float]) -> dict[str, float]:
        """Change some sources' weights (effective from the next batch drawn)."""
        self._weights = validate_mixture(self._weights, weights)
        return dict(self._weights)

    # -- position ----------------------------------------------------------------------
    def position(self) -> dict[str, Any]:
        """The sampler state: enough to draw the same batches again."""
        return {
            "rng": copy.deepcopy(self._rng.bit_generator.state),
            "cursors": {k: list(v) for k, v in self._cursors.items()},
            "weights": dict(self._weights),
            "batches": self._batches,
        }

    def restore(self, position: dict[str, Any]) -> None:
        """Go back (or forward) to a position from :meth:`position`."""
        rng = np.random.default_rng()
        rng.bit_generator.state = position["rng"]
        self._rng = rng
        self._cursors = {k: list(v) for k, v in position["cursors"].items()}
        self._weights = {**self._weights, **{k: v for k, v in position["weights"].items() if k in self._weights}}
        self._batches = int(position["batches"])

    # -- sampling ----------------------------------------------------------------------
    def _take_epoch(self, s: _Source, k: int) -> np.ndarray:
        epoch, pos = self._cursors.get(s.name, [0, 0])
        out = []
        while k > 0:
            key = (s.name, epoch)
            perm = self._perms.get(key)
            if perm is None:
                self._perms = {kk: v for kk, v in self._perms.items() if kk[0] != s.name}
                perm = self._perms[key] = epoch_permutation(self.seed, s.name, epoch, s.rows)
            take = min(k, len(perm) - pos)
            out.append(perm[pos : pos + take])
            pos += take
            k -= take
            if pos >= len(perm):
                epoch, pos = epoch + 1, 0
        self._cursors[s.name] = [epoch, pos]
        return np.concatenate(out)

    def _draw_one(self, n: int, weights: dict[str, float]) -> tuple[list[pa.Table], dict[str, Any]]:
        counts = draw_counts(self._rng, n, weights)
        parts, ages, now = [], [], time.time()
        for name, k in counts.items():
            s = self._sources[name]
            idx = self._take_epoch(s, k) if s.policy == "epoch" else draw_uniform(self._rng, s.rows, k)
            parts.append(s.table().select(self.batch_columns).take(idx))
            if s.live:
                ages.append(now - s.ingest_times()[idx])
        self._batches += 1
        meta: dict[str, Any] = {"counts": counts}
        if ages:
            a = np.concatenate(ages)
            meta["data_age_s"] = float(a.mean())
            meta["freshest_age_s"] = float(a.min())
        return parts, meta

    def next_batches(self, batch_size: int, count: int = 1) -> BatchChunk | None:
        """Draw ``count`` batches of ``batch_size`` rows; None while no source has data."""
        sizes = {name: s.rows for name, s in self._sources.items()}
        weights = effective_weights(self._weights, sizes)  # fixed for the whole call
        if not any(weights.values()):
            return None
        parts, positions, metas = [], [], []
        for _ in range(count):
            p, meta = self._draw_one(batch_size, weights)
            parts.extend(p)
            positions.append(self.position())
            metas.append(meta)
        table = pa.concat_tables(parts).combine_chunks()
        return BatchChunk(table, batch_size, positions, metas)
