"""The population-based baseline of the case studies: Ray Tune's PBT on the same task.

A population of ``population`` trials starts from the study's lr; every ``interval`` steps each
reports its validation loss with a checkpoint, and PBT has the worse trials copy a better
one's weights and optimizer state and move its lr to a neighbour in ``LR_CHOICES`` (or draw a
new one). Every trial trains ``steps_each`` steps, so the population's whole cost is
``population x steps_each`` optimizer steps - the study sets it equal to the agents' budget.

Each trial is a plain PyTorch loop over the study's own task (model, data, loss, evaluation
from :class:`~ray_interactive.examples.case_study.CaseStudyLM`), not our trainer: this is the
tool a user would reach for instead of steering. Its batches are drawn by its own seeded
shuffle, so they are not the ones our trainer draws for the same seed.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

#: The lrs PBT may move between (a neighbour on a perturbation, any on a resample).
LR_CHOICES = [3e-2, 2e-2, 1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 3e-4, 1e-4]


def _trainable(config: dict[str, Any]) -> None:
    import numpy as np
    import torch
    from ray import tune
    from ray.tune import Checkpoint

    from ray_interactive.core.task import load_task

    torch.set_num_threads(1)
    task = load_task(config["target"], config["task_kwargs"])
    model = task.build_model()
    opt = task.build_optimizer(model, config["lr"])
    table = task.data_sources()[0].static_table()
    rng = np.random.default_rng(config["seed"] * 1000 + config["member"])
    torch.manual_seed(config["seed"])
    step, order, pos = 0, rng.permutation(table.num_rows), 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # a fresh start, or PBT's exploit: another trial's state, our (new) lr
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, order, pos = state["step"], state["order"], state["pos"]
        rng = np.random.default_rng(state["seed"] + step)
        for g in opt.param_groups:
            g["lr"] = config["lr"]
    device = torch.device("cpu")
    while step < config["steps"]:
        model.train()
        for _ in range(config["interval"]):
            if pos + config["batch_size"] > len(order):
                order, pos = rng.permutation(table.num_rows), 0
            batch = task.collate(table.take(order[pos: pos + config["batch_size"]]), device)
            pos += config["batch_size"]
            loss = task.loss(model, batch)
            loss = loss[0] if isinstance(loss, tuple) else loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if math.isfinite(loss.item()):
                opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            ev = task.evaluate(model, device)["loss"]
        with tempfile.TemporaryDirectory() as d:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "order": order,
                        "pos": pos, "seed": config["seed"] * 1000 + config["member"]}, os.path.join(d, "state.pt"))
            tune.report({"eval_loss": ev if math.isfinite(ev) else 1e9, "step": step, "lr": config["lr"],
                         "train_loss": float(loss.item())}, checkpoint=Checkpoint.from_directory(d))


def run_pbt(target: str, task_kwargs: dict[str, Any], seed: int, lr: float, batch_size: int, population: int,
            steps_each: int, interval: int, storage: Path) -> dict[str, Any]:
    """One PBT search; returns the best trial's final validation loss, its curve, the lrs it
    used, and the whole cost in optimizer steps."""
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    pbt = PopulationBasedTraining(
        time_attr="training_iteration", perturbation_interval=1, quantile_fraction=0.34,
        hyperparam_mutations={"lr": LR_CHOICES}, resample_probability=0.25)
    space = {"target": target, "task_kwargs": task_kwargs, "seed": seed, "lr": lr, "batch_size": batch_size,
             "steps": steps_each, "interval": interval, "member": tune.grid_search(list(range(population)))}
    t0 = time.monotonic()
    # the whole population at once on a small machine: a fraction of a CPU each (one torch thread)
    tuner = tune.Tuner(
        tune.with_resources(_trainable, {"cpu": 0.5}), param_space=space,
        tune_config=tune.TuneConfig(scheduler=pbt, metric="eval_loss", mode="min", reuse_actors=False),
        run_config=tune.RunConfig(name=f"pbt-s{seed}", storage_path=str(storage), verbose=0,
                                  stop={"training_iteration": steps_each // interval},
                                  # keep them all: Tune's pruning races PBT's exploit (a clone's source
                                  # checkpoint deleted under it); the caller removes the folder after
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=None)),
    )
    grid = tuner.fit()
    best = grid.get_best_result(metric="eval_loss", mode="min", scope="last")
    hist = best.metrics_dataframe
    steps = [int(s) for s in hist["step"]]
    losses = [float(v) if v < 1e8 else math.nan for v in hist["eval_loss"]]
    return {
        "final_eval_loss": losses[-1] if losses else None,
        "best_eval_loss": min((v for v in losses if math.isfinite(v)), default=None),
        "eval": {"step": steps, "loss": losses},
        "lr_curve": {"step": steps, "lr": [float(v) for v in hist["lr"]]},
        "train": {"step": steps, "loss": [float(v) for v in hist["train_loss"]]},
        "steps": steps[-1] if steps else 0,
        "compute_steps": population * steps_each,
        "wall_s": round(time.monotonic() - t0, 1),
        "population": population,
        "trial_lrs": sorted({float(r.metrics.get("lr", math.nan)) for r in grid}),
    }


__all__ = ["LR_CHOICES", "run_pbt"]
