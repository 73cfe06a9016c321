"""The task protocol: what a user supplies so the trainer can train their model.

Subclass :class:`Task` and override what you need::

    class MyTask(Task):
        def build_model(self):                 # required
            return MyModel()
        def data_sources(self):                # required: the base data, as Arrow
            return [DataSource("base", pa.table({"x": ..., "y": ...}))]
        def collate(self, batch, device):      # required: Arrow batch -> tensors
            return torch.as_tensor(...).to(device), ...
        def loss(self, model, batch):          # required: a scalar, or (scalar, {metrics})
            x, y = batch
            return F.mse_loss(model(x), y)
        def evaluate(self, model, device):     # optional: {"loss": ..., ...}
            ...
        def build_optimizer(self, model, lr):  # optional: AdamW by default
            ...

A task is named in a run's config by its import path (``package.module:Class``) plus
keyword arguments, so every actor of the run (and a resumed run) can rebuild it.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from torch import nn

SamplingPolicy = Literal["uniform", "epoch"]


@dataclass
class DataSource:
    """A named source of training rows.

    ``table`` holds the rows of a static source (a base dataset); a live source starts
    empty and is fed by ``ingest``. ``schema`` defaults to the table's schema. ``policy``
    is ``"epoch"`` (each row once per epoch, shuffled) or ``"uniform"`` (with replacement).
    """

    name: str
    table: pa.Table | None = None
    schema: pa.Schema | None = None
    weight: float = 1.0
    policy: SamplingPolicy = "uniform"

    def resolved_schema(self) -> pa.Schema:
        if self.schema is not None:
            return self.schema
        if self.table is None:
            raise ValueError(f"source {self.name!r} needs a schema or a table")
        return self.table.schema


class Task:
    """Base class of a training task; see the module docstring for the protocol."""

    def build_model(self) -> nn.Module:
        """Return the model to train (on the CPU; the trainer moves it)."""
        raise NotImplementedError

    def build_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        """AdamW with two named param groups: ``decay`` (matrices) and ``no_decay``.

        Biases and norm weights (tensors of < 2 dims) get no weight decay, as usual for
        transformers. Every group has a ``name`` key so commands can address it.
        """
        decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": 0.01, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)

    def data_sources(self) -> list[DataSource]:
        """The run's data sources; built inside the data buffer's process."""
        raise NotImplementedError

    def collate(self, batch: pa.Table, device: torch.device) -> Any:
        """Turn an Arrow batch (the sources' common columns) into model inputs."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor | tuple[torch.Tensor, dict[str, float]]:
        """The scalar loss of a batch, optionally with extra metrics to log."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Evaluation metrics (logged as ``eval/<key>``). Override to enable evaluation."""
        raise NotImplementedError

    @property
    def has_eval(self) -> bool:
        """Whether this task overrides :meth:`evaluate`."""
        return type(self).evaluate is not Task.evaluate


def column_array(table: pa.Table, name: str, dtype: Any = None) -> np.ndarray:
    """A column as a writable numpy array; a list column becomes a 2-D array.

    Arrow memory is read-only (in Ray's object store, shared); the copy made here is
    tiny next to a training step and lets torch own its tensors.
    """
    chunked = table.column(name)
    col = chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        # Slice the child values directly: flatten() goes through pyarrow.compute,
        # several times slower for the small batches of a training step.
        size = col.type.list_size
        arr = col.values.slice(col.offset * size, len(col) * size).to_numpy(zero_copy_only=False)
        arr = arr.reshape(len(col), size)
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        arr = np.asarray(col.flatten()).reshape(len(col), -1)
    else:
        arr = col.to_numpy(zero_copy_only=False)
    return np.array(arr, dtype=dtype, copy=True)


_TARGET_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def load_task(target: str, kwargs: dict[str, Any] | None = None) -> Task:
    """Import ``package.module:Class`` and build it with ``kwargs``."""
    if not _TARGET_RE.match(target):
        raise ValueError(f"task {target!r} must look like 'package.module:ClassName'")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import task module {module_name!r}: {e}") from e
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"module {module_name!r} has no task {attr!r}")
    task = cls(**(kwargs or {}))
    if not isinstance(task, Task):
        raise ValueError(f"{target} is not a ray_interactive.Task subclass")
    return task
