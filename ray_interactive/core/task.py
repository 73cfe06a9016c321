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
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
from torch import nn

SamplingPolicy = Literal["uniform", "epoch", "recency", "fresh"]
SAMPLING_POLICIES: tuple[str, ...] = typing.get_args(SamplingPolicy)


@dataclass
class DataSource:
    """A named source of training rows.

    A *static* source is a fixed base dataset: ``table``, or ``path`` (a Parquet file or
    directory, or an Arrow IPC file, memory-mapped), or ``dataset`` (a Hugging Face
    ``datasets.Dataset``, which is Arrow underneath; its table is used without a copy).
    A *live* source has only a ``schema``, starts empty and is fed by ``ingest``.

    ``policy`` says how rows are drawn from the source:

    * ``"uniform"`` - uniformly, with replacement;
    * ``"epoch"`` - each row once per epoch, shuffled (static data);
    * ``"recency"`` - with replacement, newer rows more often: a row ``half_life`` rows
      older than the newest is drawn half as often;
    * ``"fresh"`` - every row not yet trained on comes first, in ingest order; the rest of
      the source's share of a batch is uniform replay.

    ``max_row_bytes`` / ``max_table_bytes`` bound what one ``ingest`` may bring. NaN and
    infinite floats are refused (static data at start, ingested tables whole, with the
    column and row) unless ``allow_non_finite``: one such value in a batch makes a loss NaN.

    Nulls are refused the same way, at every nesting level (a column's own values, list
    items, struct fields, map keys and items), even where the schema field is nullable
    (pyarrow's default, rarely a decision), unless the source allows them: ``allow_nulls``
    True allows them, False refuses them, and None (the default) allows them only in a
    ``log_only`` source, which is never trained on. Where nulls are allowed, the schema's
    own ``nullable=False`` (at any level, e.g. ``pa.list_(pa.field("item", pa.float32(),
    nullable=False))``) still holds.

    A ``log_only`` source is a live log the buffer stores durably like any other (``ingest``,
    ``read_rows``) but never draws into batches: it has no weight, takes no part in the
    mixture, and its columns need not match the training sources' (e.g. a deployed app's
    interaction log, from which training rows are derived).
    """

    name: str
    table: pa.Table | None = None
    schema: pa.Schema | None = None
    weight: float = 1.0
    policy: SamplingPolicy = "uniform"
    path: str | Path | None = None
    dataset: Any = None
    half_life: int = 1000
    max_row_bytes: int | None = None
    max_table_bytes: int | None = None
    log_only: bool = False
    allow_non_finite: bool = False
    allow_nulls: bool | None = None

    def __post_init__(self) -> None:
        if self.policy not in SAMPLING_POLICIES:
            raise ValueError(f"source {self.name!r}: unknown policy {self.policy!r}; policies: {', '.join(SAMPLING_POLICIES)}")
        given = [k for k in ("table", "path", "dataset") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"source {self.name!r}: give one of table, path, dataset (got {', '.join(given)})")
        if not 1 <= self.half_life <= 1e12:
            raise ValueError(f"source {self.name!r}: half_life must be between 1 and 1e12 rows")
        for k in ("max_row_bytes", "max_table_bytes"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise ValueError(f"source {self.name!r}: {k} must be >= 1")
        if not (self.weight >= 0 and self.weight < float("inf")):
            raise ValueError(f"source {self.name!r}: weight must be finite and >= 0")
        if self.log_only and (self.is_static or self.schema is None):
            raise ValueError(f"source {self.name!r}: a log_only source is live: give a schema and no data")
        if self.allow_nulls is not None and not isinstance(self.allow_nulls, bool):
            raise ValueError(
                f"source {self.name!r}: allow_nulls must be True, False or None (None: only a log_only source "
                f"takes nulls), not {self.allow_nulls!r}"
            )

    @property
    def nulls_allowed(self) -> bool:
        """Whether rows may hold nulls where the schema lets them (see ``allow_nulls``)."""
        return self.log_only if self.allow_nulls is None else self.allow_nulls

    @property
    def is_static(self) -> bool:
        return self.table is not None or self.path is not None or self.dataset is not None

    def static_table(self) -> pa.Table | None:
        """The rows of a static source, without copying where the format allows."""
        if self.table is not None:
            return self.table
        if self.dataset is not None:
            return dataset_table(self.dataset, self.name)
        if self.path is not None:
            return read_table_file(Path(self.path), self.name)
        return None

    def resolved_schema(self, table: pa.Table | None = None) -> pa.Schema:
        if self.schema is not None:
            return self.schema
        table = table if table is not None else self.static_table()
        if table is None:
            raise ValueError(f"source {self.name!r} needs a schema or data (table, path or dataset)")
        return table.schema


def dataset_table(dataset: Any, name: str) -> pa.Table:
    """The Arrow table under a Hugging Face ``datasets.Dataset`` (memory-mapped if the
    dataset is). A dataset with an indices mapping (after ``select``/``shuffle``) is
    flattened first, which copies."""
    if getattr(dataset, "_indices", None) is not None and hasattr(dataset, "flatten_indices"):
        dataset = dataset.flatten_indices()
    data = getattr(dataset, "data", None)
    table = getattr(data, "table", data)
    if not isinstance(table, pa.Table):
        raise ValueError(f"source {name!r}: dataset {type(dataset).__name__} has no Arrow table (.data.table)")
    return table


def read_table_file(path: Path, name: str) -> pa.Table:
    """A Parquet file or directory (decoded from a memory map), or an Arrow IPC file or
    stream (zero-copy views of a memory map)."""
    if not path.exists():
        raise ValueError(f"source {name!r}: {path} does not exist")
    try:
        if path.is_dir() or path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path, memory_map=True)
        source = pa.memory_map(str(path))
        try:
            return pa.ipc.open_file(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_stream(source).read_all()
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"source {name!r}: cannot read {path}: {e}") from None


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
