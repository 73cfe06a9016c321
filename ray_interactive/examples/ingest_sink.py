"""A task whose one live source takes opaque logged events (id, time, binary payload).

Benchmarks use it to time the data path alone; the model is a token linear layer over
the event time so a batch can still be trained on.
"""

from __future__ import annotations

import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from ray_interactive.core.task import DataSource, Task, column_array

EVENT_SCHEMA = pa.schema(
    [pa.field("id", pa.int64(), nullable=False), pa.field("t", pa.float64(), nullable=False), pa.field("payload", pa.binary())]
)


class IngestSinkTask(Task):
    def __init__(self, policy: str = "fresh") -> None:
        self.policy = policy

    def build_model(self) -> nn.Module:
        return nn.Linear(1, 1)

    def data_sources(self) -> list[DataSource]:
        return [DataSource("live", schema=EVENT_SCHEMA, policy=self.policy)]  # type: ignore[arg-type]

    def collate(self, batch: pa.Table, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(column_array(batch, "t", "float32")).to(device).unsqueeze(-1)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(model(batch), batch)
