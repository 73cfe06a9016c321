"""The training task of the miniature NeuralOS: finetune the next-frame model on base + live transitions.

Sources:

* ``base``: transitions of the random and semi-random base users (generated from ``seed`` when
  the buffer starts; the same rows every time);
* ``live``: true transitions of what demo users did, from replaying their sessions in the
  simulator (``fresh`` policy: every new transition is trained on first);
* ``interactions``: the demo's interaction log (``log_only``: kept, never trained on directly).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import torch
from torch import nn

from neuralos_example.data import (
    TASKS,
    Session,
    base_table,
    decode_pngs,
    transition_schema,
)
from neuralos_example.model import (
    BASE_CHECKPOINT,
    DEFAULT_STEPS,
    FrameBatch,
    ModelConfig,
    NextFrameModel,
    diffusion_loss,
    load_model,
)
from ray_interactive import DataSource, Task, column_array

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024  # a 64x64 PNG frame is ~0.5 KiB; anything near this is not one


def interaction_schema() -> pa.Schema:
    """One row per demo interaction, as the demo logs it."""
    return pa.schema(
        [
            pa.field("session", pa.string(), nullable=False),
            pa.field("seed", pa.int64(), nullable=False),  # the simulator seed the session replays with
            pa.field("step", pa.int32(), nullable=False),
            pa.field("time", pa.float64(), nullable=False),  # when the action was received (unix s)
            pa.field("x", pa.int16(), nullable=False),
            pa.field("y", pa.int16(), nullable=False),
            pa.field("event", pa.int8(), nullable=False),
            pa.field("key_index", pa.int8(), nullable=False),
            pa.field("task", pa.string()),  # what the user said they were doing, when known
            pa.field("frame", pa.binary(), nullable=False),  # the frame the model showed after the action (PNG)
            pa.field("model_version", pa.int64(), nullable=False),  # published weights version (0: the base)
            pa.field("latency_ms", pa.float32(), nullable=False),
            pa.field("sampler_steps", pa.int8(), nullable=False),
        ]
    )


class NeuralOSTask(Task):
    """Diffusion next-frame model; ``checkpoint`` (default: the shipped base) is where it starts."""

    def __init__(
        self,
        checkpoint: str | None = str(BASE_CHECKPOINT),
        base_rows: int = 3000,
        seed: int = 0,
        live_weight: float = 1.0,
        live_policy: str = "fresh",
        eval_sessions: int = 6,
        sampler_steps: int = DEFAULT_STEPS,
    ) -> None:
        self.checkpoint, self.base_rows, self.seed = checkpoint, base_rows, seed
        self.live_weight, self.live_policy, self.eval_sessions = live_weight, live_policy, eval_sessions
        self.sampler_steps = sampler_steps
        self._eval: dict[str, list[Session]] | None = None
        self.config = ModelConfig()

    def build_model(self) -> nn.Module:
        if self.checkpoint and Path(self.checkpoint).with_suffix(".safetensors").exists():
            model = load_model(self.checkpoint)
        else:
            if self.checkpoint:
                log.warning("no checkpoint at %s; starting from an untrained model", self.checkpoint)
            model = NextFrameModel(ModelConfig())
        self.config = model.config  # collate builds inputs for this model's size and cursor maps
        return model

    def build_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW([{"params": [p for p in model.parameters() if p.requires_grad], "name": "unet"}], lr=lr, weight_decay=0.0)

    def data_sources(self) -> list[DataSource]:
        limit = {"max_row_bytes": 3 * MAX_FRAME_BYTES, "max_table_bytes": 64 * 2**20}
        # allow_nulls: a transition's "task" is null where no task was going on (collate never
        # reads it); every other column is nullable=False, which holds all the same.
        return [
            DataSource("base", base_table(self.base_rows, self.seed), policy="uniform", allow_nulls=True),
            DataSource("live", schema=transition_schema(), weight=self.live_weight, policy=self.live_policy,  # type: ignore[arg-type]
                       allow_nulls=True, **limit),
            DataSource("interactions", schema=interaction_schema(), log_only=True, **limit),  # type: ignore[arg-type]
        ]

    def collate(self, batch: pa.Table, device: torch.device) -> FrameBatch:
        size = self.config.size
        return FrameBatch.from_arrays(
            decode_pngs(batch.column("prev"), size),
            decode_pngs(batch.column("next"), size),
            column_array(batch, "x"),
            column_array(batch, "y"),
            column_array(batch, "event"),
            column_array(batch, "key_index"),
            self.config,
            device,
        )

    def loss(self, model: nn.Module, batch: FrameBatch) -> tuple[torch.Tensor, dict[str, float]]:
        return diffusion_loss(model, batch)  # type: ignore[arg-type]

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """On fixed held-out sessions of every task (frequent and rare): closed-loop task success
        and rollout PSNR (the model drawing from its own frames, as the demo does) and
        teacher-forced next-frame PSNR, with the demo's sampler; logged as ``eval/<task>/...``."""
        from neuralos_example.evaluation import evaluate_tasks, heldout

        if self._eval is None:
            self._eval = {task: heldout(task, self.eval_sessions, seed=50_000) for task in TASKS}
        return evaluate_tasks(model, self._eval, self.sampler_steps)  # type: ignore[arg-type]


