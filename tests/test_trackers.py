"""A steered run in the trackers people use (``report_to``), on the real local Ray: our
Trainer's branches and commands read back from TensorBoard event files and an MLflow store,
and a Hugging Face ``Trainer``'s own reporting (its ``report_to``) after a load: the branch
in a run of its own, no step twice."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import ray

from .conftest import SHARED_DATA, regression_config, wait_until
from .test_unit_trackers import tb_scalars, tb_texts

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def steps_of(client: Any, run: Any, key: str = "loss") -> list[int]:
    return [m.step for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def test_our_trainer_shows_its_branches_and_commands_in_tensorboard_and_mlflow(tmp_path: Path, start: Any) -> None:
    from mlflow.tracking import MlflowClient

    handle = start(regression_config(tmp_path, start_paused=True, max_steps=30, report_to=["tensorboard", "mlflow"]))
    client = handle.client()
    save = client.send("save_checkpoint", tag="fork", at_step=10)
    lr = client.send("update_optimizer", params={"lr": 5e-4}, at_step=12, comment="halve it")
    client.send("pause", at_step=20)
    client.send("resume")
    assert client.wait(save).status.value == "applied" and client.wait(lr).status.value == "applied"
    wait_until(lambda: client.status()["status"] == "paused", timeout=120, what="the pause at step 20")
    load = client.wait(client.send("load_checkpoint", checkpoint_id="main@10", branch="b"))
    assert load.status.value == "applied", load.message
    client.send("resume")
    assert handle.wait(timeout=120) is not None  # b runs to max_steps
    ray.get(handle.controller.close.remote(), timeout=60)  # it closes its trackers: everything is written

    run_dir = tmp_path / "run"
    tb = run_dir / "tensorboard"
    # each step once (TensorBoard plots by step; under load the writer may emit a report late)
    assert sorted(s for s, _ in tb_scalars(tb / "main", "loss")) == list(range(1, 21))
    assert sorted(s for s, _ in tb_scalars(tb / "b", "loss")) == list(range(11, 31))
    texts = dict(tb_texts(tb / "main", "commands"))
    assert texts[12].startswith('#2 update_optimizer (api) {"params": {"lr": 0.0005}} -> applied at step 12')
    assert texts[10].startswith("#1 save_checkpoint") and "// halve it" in texts[12]
    # The load is a command on main (at step 20); b starts with where it came from.
    assert [t for s, t in tb_texts(tb / "main", "commands") if s == 20][-1].endswith("loaded main@10 (step 10) as branch b")
    assert tb_texts(tb / "b", "branch") == [(10, "branch b continues main from step 10 (checkpoint main@10)")]

    ml = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = ml.get_experiment_by_name(handle.config.name)
    runs = {r.data.tags.get("branch"): r for r in ml.search_runs([exp.experiment_id], "tags.branch != ''")}
    assert set(runs) == {"main", "b"}
    assert steps_of(ml, runs["main"]) == list(range(1, 21)) and steps_of(ml, runs["b"]) == list(range(11, 31))
    tags = runs["b"].data.tags
    assert (tags["parent_branch"], tags["fork_step"], tags["checkpoint"]) == ("main", "10", "main@10")
    names = [a.path for a in ml.list_artifacts(runs["main"].info.run_id, "commands")]
    assert "commands/00000012-0002-update_optimizer.txt" in names


@pytest.mark.skipif(not (SHARED_DATA / "wikitext-2").exists(), reason="needs ../shared/data")
def test_a_hugging_face_trainers_own_reporting_gets_each_step_once_per_branch(
    tmp_path: Path, ray_cluster: Any, monkeypatch: Any
) -> None:
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    import ray_interactive as ri
    from ray_interactive.examples.hf_wikitext import build_trainer

    from .test_frontends import client_of

    uri = f"sqlite:///{tmp_path / 'hf-mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "hf")
    torch.set_num_threads(1)
    out = tmp_path / "out"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(out / "tb"))  # HF's logging_dir (read by its callback)
    trainer = build_trainer(SHARED_DATA, out, max_steps=25, n_layer=1, n_embd=32, block=32, batch_size=4,
                            train_chars=60_000, eval_chars=4_000, report_to=["tensorboard", "mlflow"])
    ri.hf.steer(trainer, run="hf-tracked", run_dir=tmp_path / "run", metrics_interval_s=0.1, start_paused=True)
    seen: dict[str, Any] = {}

    def drive() -> None:
        client = wait_until(lambda: client_of("hf-tracked"), timeout=120, what="the run to start")
        client.send("save_checkpoint", at_step=10)
        client.send("pause", at_step=20)
        client.wait(client.send("resume"))
        wait_until(lambda: client.status()["status"] == "paused" and client.status()["step"] == 20, timeout=120,
                   what="the pause at step 20")
        seen["load"] = client.wait(client.send("load_checkpoint", checkpoint_id="main@10", branch="b"))
        client.send("resume")

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    try:
        trainer.train()
    finally:
        mlflow.set_tracking_uri(None)  # noqa: B026 - do not leave the URI set for later tests
    thread.join(60)
    assert seen["load"].status.value == "applied"

    # HF's log history: main up to the fork, then b - each step once, in order.
    logged = [h["step"] for h in trainer.state.log_history if "loss" in h]
    assert logged == list(range(1, 26))
    # HF's TensorBoard: main in logging_dir, b in a run of its own.
    assert [s for s, _ in tb_scalars(out / "tb", "train/loss")] == list(range(1, 21))
    assert [s for s, _ in tb_scalars(out / "tb" / "b", "train/loss")] == list(range(11, 26))
    # HF's MLflow run holds main; b is a nested run forked at step 10.
    ml = MlflowClient(tracking_uri=uri)
    runs = {r.data.tags.get("branch"): r for r in ml.search_runs([ml.get_experiment_by_name("hf").experiment_id])}
    assert runs["b"].data.tags["mlflow.parentRunId"] == runs["main"].info.run_id
    assert runs["b"].data.tags["fork_step"] == "10"
    assert steps_of(ml, runs["main"]) == list(range(1, 21)) and steps_of(ml, runs["b"]) == list(range(11, 26))
    assert all(r.info.status == "FINISHED" for r in runs.values())


def test_a_plain_loop_reports_to_tensorboard_and_refuses_an_unknown_tracker(tmp_path: Path, ray_cluster: Any) -> None:
    import torch

    import ray_interactive as ri

    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="unknown tracker 'tensorbord'; known: tensorboard, mlflow, wandb"):
        ri.steer("tb-typo", model, opt, report_to="tensorbord")
    with ri.steer("tb-loop", model, opt, run_dir=tmp_path / "run", max_steps=15, report_to="tensorboard") as s:
        while s.running:
            loss = model(torch.randn(8, 4)).pow(2).mean()
            loss.backward()
            s.step(loss=loss)
    # Leaving the session closed the run's controller, and with it its trackers.
    assert [step for step, _ in tb_scalars(tmp_path / "run" / "tensorboard" / "main", "loss")] == list(range(1, 16))
