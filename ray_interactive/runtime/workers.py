"""Many workers for our trainer: a Ray Train ``TorchTrainer`` whose every worker runs
:class:`~ray_interactive.train.trainer.Trainer` as one rank (:class:`~ray_interactive.train.ddp.Ranks`).
Rank 0 pulls the commands and reports like any loop; the others report nothing."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import ray
import torch

from ray_interactive.core.commands import CommandRecord
from ray_interactive.core.config import RunConfig
from ray_interactive.core.reporting import Reporter
from ray_interactive.core.task import load_task
from ray_interactive.runtime import ports
from ray_interactive.runtime.feeds import RayFeed
from ray_interactive.train.ddp import Ranks, own_position
from ray_interactive.train.trainer import Trainer

log = logging.getLogger(__name__)


def worker_loop(args: dict[str, Any]) -> None:
    """The function every Ray Train worker runs (``train_loop_per_worker``)."""
    logging.basicConfig(level=logging.INFO)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = RunConfig.model_validate(args["config"])
    if torch.cuda.is_available() and cfg.device != "cpu":
        cfg = cfg.model_copy(update={"device": f"cuda:{ctx.get_local_rank()}"})
        torch.cuda.set_device(ctx.get_local_rank())
    controller, buffer = args["controller"], args["buffer"]
    task = load_task(cfg.task.target, cfg.task.kwargs)  # type: ignore[union-attr]

    def feed_factory(position: dict[str, Any] | None) -> RayFeed:
        if position is None:
            position = ray.get(buffer.initial_position.remote(rank, world))
        elif "ranks" in position:
            position = own_position(position, rank, world)
        return RayFeed(buffer, cfg.batch_size, cfg.batches_per_request, cfg.requests_in_flight, position, lane=rank)

    incarnation = int(args.get("incarnation") or 0)
    if rank == 0:
        reporter = ports.reporter(controller, incarnation)
        publisher = ports.publisher(controller)
        next_weight_version = ray.get(controller.next_weight_version.remote())
    else:
        reporter, publisher, next_weight_version = Reporter(None), None, 1
    resume = args.get("resume_from")
    trainer = Trainer(
        cfg, task, feed_factory, reporter, next_seq=args["next_seq"], resume_from=Path(resume) if resume else None,
        publisher=publisher, next_weight_version=next_weight_version, ranks=Ranks(rank, world),
    )
    if args.get("paused") is not None:
        trainer.state.paused = bool(args["paused"])
    puller = None
    if rank == 0:
        trainer.core.deliver(args.get("records") or [])
        puller = ports.puller(controller, trainer.core, args["next_seq"] - 1, f"{cfg.name}-rank0", incarnation).start()
    try:
        trainer.run()
    finally:
        if puller is not None:
            puller.stop()


def fit(config: RunConfig, controller: Any, buffer: Any, next_seq: int, resume_from: str | None,
        records: list[CommandRecord] | None = None, paused: bool | None = None, incarnation: int = 0) -> None:
    """Run ``config.workers`` ranks under Ray Train until the run ends (raises if a worker
    fails: the caller recovers)."""
    from ray.train import FailureConfig, ScalingConfig
    from ray.train import RunConfig as TrainRunConfig
    from ray.train.torch import TorchTrainer

    use_gpu = config.device != "cpu" and ray.cluster_resources().get("GPU", 0) >= config.workers
    run_dir = config.resolved_run_dir
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "config": config.model_dump(mode="json"), "controller": controller, "buffer": buffer,
            "next_seq": next_seq, "resume_from": resume_from, "records": records or [], "paused": paused,
            "incarnation": incarnation,
        },
        scaling_config=ScalingConfig(
            num_workers=config.workers, use_gpu=use_gpu, resources_per_worker={"CPU": config.trainer_num_cpus or 0.001}
        ),
        run_config=TrainRunConfig(
            name=f"{config.name}-{int(time.time() * 1000)}", storage_path=str(run_dir / "ray_train"),
            failure_config=FailureConfig(max_failures=0),  # a lost worker: recovered by us, from our checkpoint
        ),
    )
    trainer.fit()
