"""A small MLP regression task on synthetic data: fast, deterministic, tunable in size.

Tests use it because a step takes milliseconds; benchmarks use it because ``width`` and
``depth`` set the step time (about 5 ms and 50 ms on a 2-core CPU at the sizes in
``benchmarks/``). ``pace_s`` makes each micro-batch take at least that long, as a bigger
model would, without the CPU: at its natural ~1 ms a step the toy trains ~900 steps a
second and takes a whole core (and a sixth of another for its buffer and controller) for
nothing, which the tests pace down so that a 2-core machine is left for what they check.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from ray_interactive.core.task import DataSource, Task, column_array


def make_table(rows: int, in_dim: int, seed: int) -> pa.Table:
    """Rows ``x`` (list of floats) and ``y`` = a fixed random teacher of ``x`` plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, in_dim), dtype=np.float32)
    w = np.random.default_rng(1234).standard_normal((in_dim,), dtype=np.float32) / np.sqrt(in_dim)
    y = (np.tanh(x @ w) + 0.05 * rng.standard_normal(rows)).astype(np.float32)
    return pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), in_dim), "y": y})


def live_schema(in_dim: int, extra_columns: bool = False) -> pa.Schema:
    """The schema of the ``live`` source: like the base rows, non-nullable; optionally with
    the kind of columns a deployed app logs (a user id and a free-text note)."""
    fields = [pa.field("x", pa.list_(pa.float32(), in_dim), nullable=False), pa.field("y", pa.float32(), nullable=False)]
    if extra_columns:
        fields += [pa.field("user", pa.string(), nullable=False), pa.field("note", pa.string())]
    return pa.schema(fields)


def columns_to_tensors(table: pa.Table, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = column_array(table, "x")
    y = column_array(table, "y")
    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)


class RegressionTask(Task):
    """Fit ``y`` from ``x`` with an MLP (Linear, LayerNorm, GELU, Dropout blocks)."""

    def __init__(
        self,
        in_dim: int = 32,
        width: int = 64,
        depth: int = 2,
        rows: int = 4096,
        dropout: float = 0.1,
        seed: int = 0,
        extra_source: bool = False,
        live_source: bool = False,
        live_weight: float = 0.3,
        live_policy: str = "fresh",
        live_extra_columns: bool = False,
        pace_s: float = 0.0,
    ) -> None:
        self.in_dim, self.width, self.depth, self.rows, self.dropout, self.seed = in_dim, width, depth, rows, dropout, seed
        self.extra_source = extra_source
        self.live_source, self.live_weight, self.live_policy = live_source, live_weight, live_policy
        self.live_extra_columns = live_extra_columns
        if not 0.0 <= pace_s <= 10.0:
            raise ValueError(f"pace_s must be in [0, 10] seconds, not {pace_s}")
        self.pace_s = pace_s

    def build_model(self) -> nn.Module:
        layers: list[nn.Module] = []
        d = self.in_dim
        for _ in range(self.depth):
            layers += [nn.Linear(d, self.width), nn.LayerNorm(self.width), nn.GELU(), nn.Dropout(self.dropout)]
            d = self.width
        layers.append(nn.Linear(d, 1))
        return nn.Sequential(*layers)

    def data_sources(self) -> list[DataSource]:
        sources = [DataSource("base", make_table(self.rows, self.in_dim, self.seed), policy="epoch")]
        if self.extra_source:  # a second source, to exercise mixtures
            sources.append(DataSource("extra", make_table(self.rows // 4, self.in_dim, self.seed + 7), weight=0.5))
        if self.live_source:  # rows arrive while training runs (ingest)
            sources.append(
                DataSource("live", schema=live_schema(self.in_dim, self.live_extra_columns), weight=self.live_weight, policy=self.live_policy)  # type: ignore[arg-type]
            )
        return sources

    def collate(self, batch: pa.Table, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return columns_to_tensors(batch, device)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if self.pace_s:
            time.sleep(self.pace_s)  # a bigger model's time, not its CPU
        x, y = batch
        return F.mse_loss(model(x).squeeze(-1), y)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        x, y = columns_to_tensors(make_table(512, self.in_dim, self.seed + 1), device)
        out = {"loss": F.mse_loss(model(x).squeeze(-1), y).item()}
        if self.extra_source:  # each source's own held-out loss (what a mixture agent compares)
            for name, seed in (("base", self.seed + 1), ("extra", self.seed + 8)):
                x, y = columns_to_tensors(make_table(512, self.in_dim, seed), device)
                out[f"{name}/loss"] = F.mse_loss(model(x).squeeze(-1), y).item()
        return out


class NoEvalRegressionTask(RegressionTask):
    """The same task without evaluation (to check that ``evaluate`` is refused)."""

    evaluate = Task.evaluate  # type: ignore[assignment]
