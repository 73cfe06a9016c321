"""Each command kind end to end on a real run: client -> controller -> trainer -> effect.

Every test checks three things: the command is applied at a step, the change is visible
in the trainer's live state (optimizer, model, schedule, buffer), and the command log on
disk records it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from safetensors.torch import load_file

from ray_interactive.runtime.client import RunClient
from ray_interactive.runtime.launch import RunHandle, start_run

from .conftest import regression_config, running_client, wait_until


@pytest.fixture(scope="module")
def run(ray_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunHandle]:
    config = regression_config(
        tmp_path_factory.mktemp("kinds"), task_kwargs={"extra_source": True}, metrics_interval_s=0.05
    )
    handle = start_run(config)
    yield handle
    handle.shutdown()


@pytest.fixture
def client(run: RunHandle) -> RunClient:
    return running_client(run)


def applied(client: RunClient, kind: str, **fields: Any) -> Any:
    rec = client.send(kind, **fields)
    assert rec.status.value == "accepted", rec.message
    assert rec.seq is not None
    rec = client.wait(rec, timeout=30)
    assert rec.status.value == "applied", rec.message
    assert rec.applied_step is not None
    return rec


def logged(run: RunHandle, command_id: str) -> list[dict[str, Any]]:
    path = Path(run.config.resolved_run_dir) / "commands.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return [x for x in lines if x["command"] and x["command"]["id"] == command_id]


def metric_at(client: RunClient, key: str, step: int, timeout: float = 60.0) -> float:
    """The value of ``key`` logged at exactly ``step`` (waiting for it to be logged)."""
    found: dict[str, float] = {}

    def find() -> bool:
        s = client.metrics(keys=[key], since=step).get(key)
        if s and s["step"] and s["step"][0] == step:
            found["v"] = s["value"][0]
        return "v" in found

    wait_until(find, timeout, what=f"{key} at step {step}")
    return found["v"]


def test_update_optimizer_lr_is_used_by_the_very_next_step(run: RunHandle, client: RunClient) -> None:
    rec = applied(client, "update_optimizer", params={"lr": 3.3e-4})
    # Metrics are logged after the step: step applied_step + 1 is the first to use it.
    assert metric_at(client, "lr", rec.applied_step + 1) == pytest.approx(3.3e-4, rel=1e-12)
    groups = client.snapshot()["groups"]
    assert all(g["hparams"]["lr"] == pytest.approx(3.3e-4) for g in groups)
    statuses = [x["status"] for x in logged(run, rec.id)]
    assert statuses == ["accepted", "applied"]


def test_update_optimizer_other_hyperparameters_one_group(client: RunClient) -> None:
    applied(client, "update_optimizer", params={"weight_decay": 0.05, "betas": [0.8, 0.95], "eps": 1e-7}, group="decay")
    groups = {g["name"]: g["hparams"] for g in client.snapshot()["groups"]}
    assert groups["decay"]["weight_decay"] == pytest.approx(0.05)
    assert groups["decay"]["betas"] == pytest.approx([0.8, 0.95])
    assert groups["decay"]["eps"] == pytest.approx(1e-7)
    assert groups["no_decay"]["weight_decay"] == 0.0  # the other group is untouched


def test_lr_command_rescales_a_running_schedule(client: RunClient) -> None:
    applied(client, "update_optimizer", params={"lr": 1e-3})
    applied(client, "set_lr_schedule", schedule="linear", steps=10_000, min_lr_ratio=0.0)
    try:
        rec = applied(client, "update_optimizer", params={"lr": 5e-4})
        s = rec.applied_step
        first = metric_at(client, "lr", s + 1)
        later = metric_at(client, "lr", s + 20)
        assert first == pytest.approx(5e-4, rel=1e-9)  # the schedule did not undo it
        assert later < first  # and it keeps decaying from there
    finally:  # the run is shared with the tests after this one
        applied(client, "set_lr_schedule", schedule="constant")


def test_set_lr_schedule_cosine_follows_the_curve(client: RunClient) -> None:
    applied(client, "update_optimizer", params={"lr": 1e-3})
    try:
        rec = applied(client, "set_lr_schedule", schedule="cosine", steps=40, min_lr_ratio=0.1)
        s = rec.applied_step
        mid = metric_at(client, "lr", s + 21)
        end = metric_at(client, "lr", s + 45)
        assert mid == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 20 / 40))), rel=1e-6)
        assert end == pytest.approx(1e-4, rel=1e-6)
        assert client.snapshot()["schedule"]["kind"] == "cosine"
    finally:
        applied(client, "set_lr_schedule", schedule="constant")


def test_grad_clip_and_accumulation(client: RunClient) -> None:
    applied(client, "set_grad_clip", max_norm=0.5)
    assert client.snapshot()["grad_clip"] == 0.5
    applied(client, "set_grad_clip", max_norm=None)
    assert client.snapshot()["grad_clip"] is None
    before = client.status()["samples_seen"]
    try:
        rec = applied(client, "set_grad_accumulation", steps=3)
        assert client.snapshot()["grad_accumulation"] == 3
        # 16 rows a micro-batch, 3 micro-batches a step
        wait_until(lambda: client.status()["samples_seen"] >= before + 10 * 48, what="accumulated steps")
        s1 = client.status()
        assert (s1["samples_seen"] - before) % 16 == 0
        assert metric_at(client, "samples_per_s", rec.applied_step + 1) > 0
    finally:
        applied(client, "set_grad_accumulation", steps=1)
        applied(client, "set_grad_clip", max_norm=1.0)


def test_pause_holds_the_step_and_commands_still_apply(client: RunClient) -> None:
    applied(client, "pause")
    wait_until(lambda: client.status()["status"] == "paused", what="paused status")
    step = client.status()["step"]
    rec = applied(client, "update_optimizer", params={"lr": 2e-4})  # applied while paused
    assert rec.applied_step == step
    assert client.snapshot()["groups"][0]["hparams"]["lr"] == pytest.approx(2e-4)
    assert client.status()["step"] == step
    applied(client, "resume")
    wait_until(lambda: client.status()["step"] > step + 5, what="steps after resume")
    assert metric_at(client, "lr", step + 1) == pytest.approx(2e-4)


def test_save_checkpoint_writes_all_state(run: RunHandle, client: RunClient) -> None:
    rec = applied(client, "save_checkpoint", tag="kept")
    ckpts = {c["id"]: c for c in client.checkpoints()}
    cid = rec.message.removeprefix("saved ")
    assert ckpts[cid]["tag"] == "kept" and ckpts[cid]["step"] == rec.applied_step
    d = Path(run.config.resolved_run_dir) / "checkpoints" / cid
    assert {p.name for p in d.iterdir()} == {"model.safetensors", "optimizer.pt", "rng.safetensors", "state.json"}
    state = json.loads((d / "state.json").read_text())["state"]
    assert state["step"] == rec.applied_step
    assert set(state["data_position"]) >= {"rng", "cursors", "weights"}
    assert "0.weight" in load_file(str(d / "model.safetensors"))


def test_evaluate_now(client: RunClient) -> None:
    rec = applied(client, "evaluate")
    assert "eval/loss=" in rec.message
    assert metric_at(client, "eval/loss", rec.applied_step) > 0


def test_publish_weights_makes_a_version(run: RunHandle, client: RunClient) -> None:
    rec = applied(client, "publish_weights", comment="for the demo")
    version = int(rec.message.split()[3])
    assert rec.message == f"published weights version {version} at step {rec.applied_step}"
    entry = wait_until(lambda: client.weight_version(), what="the version at the controller")
    assert (entry.version, entry.step, entry.branch, entry.reason) == (version, rec.applied_step, "main", "command")
    assert [s["status"] for s in logged(run, rec.id)] == ["accepted", "applied"]


def test_set_data_mixture_changes_what_batches_hold(run: RunHandle, client: RunClient) -> None:
    rec = applied(client, "set_data_mixture", weights={"extra": 0.0})
    assert client.snapshot()["mixture"]["extra"] == 0.0  # the trainer draws with it now
    # The buffer takes the weights with the first request of the trainer's new stream,
    # which is under way but may not have arrived yet.
    wait_until(lambda: ray.get(run.buffer.mixture.remote())["extra"] == 0.0, what="the buffer's mixture")
    s = rec.applied_step
    wait_until(lambda: client.status()["step"] > s + 10, what="steps")
    mix = client.metrics(keys=["mix/base", "mix/extra"], since=s + 1)
    assert all(v == 1.0 for v in mix["mix/base"]["value"])
    assert "mix/extra" not in mix or all(v == 0 for v in mix["mix/extra"]["value"])
    rec = applied(client, "set_data_mixture", weights={"base": 0.0, "extra": 1.0})
    wait_until(lambda: client.status()["step"] > rec.applied_step + 5, what="steps")
    mix = client.metrics(keys=["mix/extra"], since=rec.applied_step + 1)
    assert all(v == 1.0 for v in mix["mix/extra"]["value"])
    applied(client, "set_data_mixture", weights={"base": 1.0, "extra": 0.5})


def _weights(run: RunHandle, client: RunClient, tag: str) -> dict[str, Any]:
    rec = applied(client, "save_checkpoint", tag=tag)
    cid = rec.message.removeprefix("saved ")
    return load_file(str(Path(run.config.resolved_run_dir) / "checkpoints" / cid / "model.safetensors"))


def test_update_module_attribute_freeze_unfreeze_reset(run: RunHandle, client: RunClient) -> None:
    applied(client, "update_module", module="3", op="set_attribute", attribute="p", value=0.25)
    assert client.snapshot()["modules"]["3"]["attributes"]["p"] == 0.25

    applied(client, "update_module", module="0", op="freeze")
    assert client.snapshot()["modules"]["0"]["trainable"] == 0
    w1 = _weights(run, client, "frozen1")
    step = client.status()["step"]
    wait_until(lambda: client.status()["step"] > step + 10, what="steps")
    w2 = _weights(run, client, "frozen2")
    assert (w1["0.weight"] == w2["0.weight"]).all()  # frozen: unchanged
    assert not (w1["4.weight"] == w2["4.weight"]).all()  # the rest trains

    applied(client, "update_module", module="0", op="unfreeze")
    assert client.snapshot()["modules"]["0"]["trainable"] > 0
    rec = applied(client, "update_module", module="4", op="reset_parameters")
    assert "reset 1 submodules" in rec.message
    w3 = _weights(run, client, "reset")
    assert not (w3["4.weight"] == w2["4.weight"]).all()


def test_command_log_holds_every_command_and_outcome(run: RunHandle, client: RunClient) -> None:
    rows = client.commands()
    path = Path(run.config.resolved_run_dir) / "commands.jsonl"
    ids_on_disk = {json.loads(x)["command"]["id"] for x in path.read_text().splitlines() if json.loads(x)["command"]}
    assert {r["id"] for r in rows if r["kind"]} <= ids_on_disk
    applied_rows = [r for r in rows if r["status"] == "applied"]
    assert applied_rows and all(r["applied_step"] is not None and r["branch"] == "main" for r in applied_rows)
    seqs = [r["seq"] for r in rows if r["seq"] is not None]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_mixture_commands_are_checked_against_the_mixture_they_will_leave(client: RunClient) -> None:
    """Each alone is valid; together they would zero every weight: the second is refused
    at submission instead of failing (or worse) in the trainer."""
    applied(client, "set_data_mixture", weights={"base": 1.0, "extra": 0.5})
    first = client.send("set_data_mixture", weights={"base": 0.0})
    second = client.send("set_data_mixture", weights={"extra": 0.0})
    assert first.status.value == "accepted"
    assert second.status.value == "rejected" and "at least one source must keep a weight > 0" in second.message
    client.wait(first)
    applied(client, "set_data_mixture", weights={"base": 1.0, "extra": 0.5})
    step = client.status()["step"]
    wait_until(lambda: client.status()["step"] > step + 5, what="training after the mixture commands")


def test_a_broken_checkpoint_fails_to_load_and_the_run_goes_on_unchanged(run: RunHandle, client: RunClient) -> None:
    rec = applied(client, "save_checkpoint", tag="broken")
    cid = rec.message.removeprefix("saved ")
    (Path(run.config.resolved_run_dir) / "checkpoints" / cid / "optimizer.pt").write_bytes(b"not a checkpoint")
    before = client.snapshot()
    load = client.wait(client.send("load_checkpoint", checkpoint_id=cid, branch="never"))
    assert load.status.value == "failed" and load.message
    status = client.status()
    assert status["branch"] == "main" and status["status"] == "running"
    assert client.snapshot()["groups"] == before["groups"]
    wait_until(lambda: client.status()["step"] > status["step"] + 5, what="training after the failed load")
