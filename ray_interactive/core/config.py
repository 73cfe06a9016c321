"""A run's configuration: plain, validated data, saved as ``config.json`` in the run dir."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ray_interactive.core.commands import check_name
from ray_interactive.core.paths import DEFAULT_NAMESPACE, runs_root
from ray_interactive.core.schedules import check_args
from ray_interactive.core.trackers.registry import check_report_to


class TaskSpec(BaseModel):
    """Which task to train: an import path and keyword arguments (JSON values)."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="'package.module:TaskClass'")
    kwargs: dict[str, Any] = Field(default_factory=dict)


class ScheduleConfig(BaseModel):
    """The learning-rate schedule a run starts with (see :mod:`ray_interactive.core.schedules`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["constant", "linear", "cosine", "step"] = "constant"
    steps: int | None = Field(default=None, ge=1)
    min_lr_ratio: float = Field(default=0.0, ge=0.0, le=1.0)
    gamma: float = Field(default=0.1, gt=0.0, le=1.0)
    warmup_steps: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _steps_needed(self) -> ScheduleConfig:
        check_args(self.kind, self.steps)
        return self


class BufferConfig(BaseModel):
    """How the data buffer stores live rows (see :mod:`ray_interactive.data.segments`)."""

    model_config = ConfigDict(extra="forbid")

    fsync: bool = Field(default=True, description="fsync each ingest before acknowledging it")
    segment_mb: float = Field(default=64.0, gt=0.0, le=65536.0, description="segment files roll at this size")
    memory_mb: float = Field(
        default=1024.0, gt=0.0, description="live rows held in memory; older ones are read from the memory-mapped segments"
    )
    memory_rows: int | None = Field(default=None, ge=1, description="optional cap on live rows held in memory")
    stats_interval_s: float = Field(default=1.0, gt=0.0, le=3600.0, description="buffer -> controller metrics")
    pull_interval_s: float = Field(
        default=0.05, gt=0.0, le=60.0, description="with buffer_shards > 1: how often the primary merges the shards' new rows"
    )


class HttpIngestConfig(BaseModel):
    """Serve ingest over HTTP for apps that are not Ray drivers (see :mod:`ray_interactive.serve.ingest_http`)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="bind address; 0.0.0.0 to accept other machines")
    port: int = Field(default=0, ge=0, le=65535, description="0: a free port (see <run_dir>/ingest_url)")
    max_body_mb: float = Field(default=64.0, gt=0.0, le=4096.0, description="largest request body accepted")


class ControlApiConfig(BaseModel):
    """The run's control API over HTTP (:mod:`ray_interactive.serve.control_http`): what the
    CLI uses to answer in a fraction of a second. URL and token go to the run directory."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="bind address; 0.0.0.0 to accept other machines")
    port: int = Field(default=0, ge=0, le=65535, description="0: a free port (see <run_dir>/api_url)")


class HealthConfig(BaseModel):
    """The training health guard: what a run does when a step's loss or gradient norm is
    not finite (the step itself is always skipped: its update never reaches the weights)."""

    model_config = ConfigDict(extra="forbid")

    on_non_finite: Literal["pause", "skip", "rollback"] = Field(
        default="pause",
        description="pause: pause with a message; skip: go on with the next batch; "
        "rollback: load the newest checkpoint with finite weights and lower the lr",
    )
    max_skips: int = Field(default=20, ge=1, le=1_000_000, description="skip: consecutive skipped steps before pausing")
    lr_factor: float = Field(default=0.5, gt=0.0, lt=1.0, description="rollback: the lr is multiplied by this")
    max_rollbacks: int = Field(default=3, ge=1, le=1000, description="rollback: to one checkpoint, before pausing")


class Guard(BaseModel):
    """One figure the canary must hold: ``higher`` (or ``lower``) is better, and by how
    much it may be worse than the reference and still be promoted (in the figure's own
    units). The reference is the stable version, or with ``against="base"`` the weights the
    replicas started with (version 0): a bound small losses cannot add up past, one
    promotion after another, and that a lucky stable figure does not raise."""

    model_config = ConfigDict(extra="forbid")

    better: Literal["higher", "lower"] = "higher"
    margin: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    against: Literal["stable", "base"] = "stable"


class RolloutConfig(BaseModel):
    """``RunConfig.rollout``: guard the deployed replicas from a bad version."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    canary_replicas: int = Field(
        default=1, ge=0, le=1000,
        description="replicas that serve a new version first; 0: none, the judge's own evaluation alone decides "
        "(a single deployed replica never serves an unjudged version)",
    )
    guards: dict[str, Guard] = Field(
        default_factory=lambda: {"loss": Guard(better="lower", margin=0.0)},
        description="figure -> guard: the figures of the judge's evaluation the canary must hold",
    )


class RunConfig(BaseModel):
    """Everything that defines a run. Unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")

    name: str
    task: TaskSpec | None = Field(
        default=None, description="the task our Trainer actor trains; None for a loop steered in-process (ri.steer, ri.hf)"
    )
    run_dir: Path | None = Field(default=None, description="default: <runs root>/<name> (core.paths.runs_root)")
    seed: int = 0
    batch_size: int = Field(default=32, ge=1, le=1_000_000)
    lr: float = Field(default=1e-3, gt=0.0, le=10.0)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    grad_clip: float | None = Field(default=1.0, gt=0.0)
    grad_accumulation: int = Field(default=1, ge=1, le=4096)
    max_steps: int | None = Field(default=None, ge=1)
    checkpoint_every: int | None = Field(default=None, ge=1, description="steps between checkpoints")
    checkpoint_interval_s: float | None = Field(
        default=300.0,
        gt=0.0,
        le=7 * 86400.0,
        description="seconds between periodic checkpoints (on by default, so a crash loses minutes, not the run; "
        "None: only checkpoint_every and commands)",
    )
    checkpoint_keep: int | None = Field(
        default=10,
        ge=1,
        le=1_000_000,
        description="periodic checkpoints kept per branch (tagged, saved-by-command, final and branch-point "
        "ones are always kept); None keeps all",
    )
    saved_weights: Literal["all", "trainable"] = Field(
        default="all",
        description="what checkpoints and published weight versions hold: 'all' of the model, or 'trainable': "
        "only the parameters trainable when the run starts (and buffers) - a LoRA adapter on a frozen pretrained "
        "base the task builds the same way every time, megabytes instead of the whole model; commands that "
        "would change the base (unfreeze, reset_parameters of a base module) are then refused",
    )
    eval_every: int | None = Field(default=None, ge=1, description="steps between evaluations")
    publish_every: int | None = Field(default=None, ge=1, description="steps between weight versions published")
    weights_keep: int = Field(default=8, ge=1, le=10_000, description="weight versions the controller keeps")
    start_paused: bool = Field(default=False, description="wait for a resume before the first step")
    mixture: dict[str, float] | None = Field(default=None, description="initial source weights")
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    metrics_interval_s: float = Field(default=0.5, gt=0.0, le=60.0, description="trainer -> controller")
    metrics_flush_s: float = Field(default=5.0, gt=0.0, le=3600.0, description="controller -> disk")
    batches_per_request: int | None = Field(
        default=None, ge=1, le=1024, description="batches per buffer call; default: ~50 ms of training"
    )
    requests_in_flight: int = Field(default=2, ge=1, le=64, description="buffer calls kept in flight")
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    workers: int = Field(
        default=1, ge=1, le=4096,
        description="data-parallel training processes (DDP under Ray Train: gloo on CPU, NCCL on GPU); 1: one trainer",
    )
    autocast: Literal["bf16"] | None = Field(
        default=None, description="run forward and loss under torch.autocast in this dtype (weights stay float32)"
    )
    torch_threads: int | None = Field(default=None, ge=1, le=1024)
    trainer_num_cpus: float = Field(default=1.0, ge=0.0)
    placement: dict[Literal["controller", "trainer", "buffer"], dict[str, float]] = Field(
        default_factory=dict,
        description="custom Ray resources an actor needs, to pin it to the nodes that have them (e.g. "
        "{'controller': {'head': 0.01}} with the head started with --resources='{\"head\": 1}'); "
        "'buffer' applies to every shard",
    )
    buffer_shards: int = Field(
        default=1, ge=1, le=64,
        description="data buffer actors (spread over the nodes); ingests are spread over them by batch_id, the "
        "first (the primary) merges every shard's rows in one durable order and serves the trainer",
    )
    namespace: str = DEFAULT_NAMESPACE
    http_ingest: HttpIngestConfig | None = Field(default=None, description="serve ingest over HTTP")
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig,
        description="guarded rollout of published weights to deployed replicas (a canary first; core/rollout.py)",
    )
    control_api: ControlApiConfig | None = Field(
        default_factory=ControlApiConfig, description="serve the control API over HTTP (the CLI's fast path); None: off"
    )
    health: HealthConfig = Field(default_factory=HealthConfig)
    diagnostics_every: int | None = Field(
        default=None, ge=1, le=1_000_000,
        description="sample per-module health metrics (health/<module>/act_std, dead, grad_norm, update_ratio) "
        "every N steps; None: off",
    )
    diagnostics_groups: int = Field(default=8, ge=1, le=256, description="at most this many module groups")
    max_restarts: int = Field(
        default=3, ge=0, le=1000,
        description="times a lost trainer is restarted from the newest checkpoint before the run fails",
    )
    stall_after_s: float | None = Field(
        default=None, gt=0.0, le=86400.0,
        description="status 'stalled' when no step completes for this long; None: 20 of the run's recent step "
        "times, at least 10 s and at most 600 s (core/stalls.py)",
    )

    report_to: list[str] = Field(
        default_factory=list,
        description="experiment trackers the run reports to: 'tensorboard', 'mlflow', 'wandb' (a list, or one "
        "name; 'none': none); each branch shows as a run of its own (core/trackers)",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, max_length=2000, description="report_to mlflow: where to; default: file:<run_dir>/mlruns"
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _report_to(cls, v: Any, info: ValidationInfo) -> list[str]:
        # A stored config is read where the libraries may be missing (a finished run opened elsewhere).
        return check_report_to(v, installed=not (info.context or {}).get("stored"))

    @field_validator("placement")
    @classmethod
    def _resources(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for role, res in v.items():
            for key, amount in res.items():
                if key in ("CPU", "GPU", "memory", "object_store_memory") or not key or amount <= 0:
                    raise ValueError(f"placement.{role}: {key!r}: {amount} is not a custom resource amount > 0 "
                                     "(CPUs and GPUs are set by trainer_num_cpus and device)")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "run name")

    @field_validator("lr")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("lr must be finite")
        return v

    @field_validator("mixture")
    @classmethod
    def _mixture(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None:
            for k, w in v.items():
                if not math.isfinite(w) or w < 0:
                    raise ValueError(f"mixture weight of {k!r} must be finite and >= 0")
        return v

    @property
    def resolved_run_dir(self) -> Path:
        return (self.run_dir or runs_root() / self.name).resolve()

    def save(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls.model_validate(json.loads(path.read_text()), context={"stored": True})


def actor_name(run: str, role: Literal["controller", "trainer", "buffer", "ingest"]) -> str:
    """The Ray name of one of a run's actors."""
    return f"{run}.{role}"


def shard_actor_name(run: str, shard: int) -> str:
    """The Ray name of buffer shard ``shard`` (0 is the primary, named ``actor_name(run, "buffer")``)."""
    return actor_name(run, "buffer") if shard == 0 else f"{run}.buffer-{shard}"
