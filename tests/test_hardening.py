"""A live run against the inputs that used to break or stall one (issue: hardening), end
to end through Ray, the client and the CLI: an lr that explodes, freezes of everything, a
mixture with nothing to draw, pinned commands far ahead and their cancellation, checkpoint
ids that are paths, reused ids, hostile payloads, numeric module paths. Each time the run
stays alive, says what happened, and its history stays readable."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from ray_interactive.examples.regression import live_schema
from ray_interactive.runtime.launch import RunHandle, start_run

from .conftest import REPO, regression_config, running_client, wait_until

CLI = [str(Path(sys.executable).parent / "ray-interactive")]


def cli(address: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "--address", address, *args], capture_output=True, text=True, timeout=timeout,
                          env=os.environ.copy(), cwd=REPO)


@pytest.fixture(scope="module")
def run(ray_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunHandle]:
    handle = start_run(regression_config(tmp_path_factory.mktemp("hard"), task_kwargs={"live_source": True}))
    yield handle
    handle.shutdown()


def history_kinds(client: Any, n: int = 30) -> list[tuple[str | None, str | None, str]]:
    return [(r["source"], r["kind"], r["status"]) for r in client.commands(limit=n, newest_first=True)]


def test_an_exploding_lr_pauses_the_run_saying_why_and_no_nan_reaches_weights_or_plots(
    ray_cluster: dict[str, Any], tmp_path: Path, start: Any
) -> None:
    handle = start(regression_config(tmp_path, publish_every=None))
    client = handle.client()
    wait_until(lambda: client.status()["step"] >= 5, what="training")
    # Valid alone (both within their bounds), explosive together.
    rec = client.wait(client.send("update_optimizer", params={"lr": 10.0, "weight_decay": 10.0}))
    assert rec.status.value == "applied"
    status = wait_until(lambda: (s := client.status())["status"] == "paused" and s, timeout=60, what="the guard")
    assert "health guard paused the run: non-finite" in status["message"]
    assert "Lower the lr, clip gradients or load a checkpoint, then resume" in status["message"]
    rows = wait_until(lambda: [r for r in client.commands(newest_first=True) if r["source"] == "system"], what="event")
    assert rows[0]["kind"] == "pause" and rows[0]["status"] == "applied" and rows[0]["seq"] is None
    assert "health guard" in rows[0]["message"] and rows[0]["applied_step"] == status["step"]
    losses = client.metrics(keys=["loss"])["loss"]["value"]
    assert losses and all(math.isfinite(v) for v in losses)  # the skipped step logged no NaN
    assert client.metrics(keys=["health/skipped_steps"])["health/skipped_steps"]["value"][-1] >= 1
    published = client.wait(client.send("publish_weights"))
    assert published.status.value == "applied", published.message
    _, state = client.latest_weights(timeout=60)  # type: ignore[misc] # the version reaches the controller soon after
    assert all(np.isfinite(t.float().numpy()).all() for t in state.values())
    out = cli(ray_cluster["address"], "status", handle.config.name)
    assert out.returncode == 0 and "paused" in out.stdout and "health guard paused the run" in out.stdout


def test_rollback_policy_goes_back_to_the_last_good_checkpoint_with_a_lower_lr(
    ray_cluster: dict[str, Any], tmp_path: Path, start: Any
) -> None:
    handle = start(regression_config(tmp_path, health={"on_non_finite": "rollback", "lr_factor": 0.5}))
    client = handle.client()
    wait_until(lambda: client.status()["step"] >= 5, what="training")
    good = client.wait(client.send("save_checkpoint", tag="good"))
    good_id = good.message.split("saved ")[1]
    client.wait(client.send("update_optimizer", params={"lr": 10.0, "weight_decay": 10.0}))

    def rolled_back() -> Any:
        status = client.status()
        forks = [b for b, info in client.branches().items() if info.get("checkpoint") == good_id]
        return status["status"] == "running" and status["branch"] in forks and status["branch"]

    branch = wait_until(rolled_back, timeout=90, what="the rollback")
    system = [r for r in client.commands() if r["source"] == "system"]
    kinds = [(r["kind"], r["status"]) for r in system]
    assert kinds[:4] == [("rollback", "applied"), ("load_checkpoint", "applied"), ("update_optimizer", "applied"),
                         ("resume", "applied")], kinds
    assert f"Rolling back to {good_id} with the lr times 0.5" in system[0]["message"]
    assert system[2]["args"]["params"] == {"lr": 5.0} and "health guard" in system[2]["comment"]
    snap = client.snapshot()
    rollbacks = sum(r["kind"] == "rollback" for r in system)  # a second one would halve it again
    assert snap["branch"] == branch and snap["groups"][0]["hparams"]["lr"] == pytest.approx(5.0 * 0.5 ** (rollbacks - 1))
    assert snap["groups"][0]["hparams"]["weight_decay"] == pytest.approx(0.01)  # the checkpoint's, restored


def test_freezes_that_would_leave_nothing_to_train_are_refused_and_training_goes_on(run: RunHandle) -> None:
    client = running_client(run)
    # the model: 0 Linear, 1 LayerNorm, 2 GELU, 3 Dropout, 4 Linear, 5 LayerNorm, 6 GELU, 7 Dropout, 8 Linear
    for module in ("0", "1", "4", "5"):
        assert client.wait(client.send("update_module", module=module, op="freeze")).status.value == "applied"
    rec = client.send("update_module", module="8", op="freeze")
    assert rec.status.value == "rejected"
    assert "freezing '8' would leave no trainable parameters; unfreeze something first" in rec.message
    step = client.status()["step"]
    wait_until(lambda: client.status()["step"] > step + 5, what="training on the last module")
    for module in ("0", "1", "4", "5"):
        client.wait(client.send("update_module", module=module, op="unfreeze"))
    assert client.status()["status"] == "running"


def test_a_mixture_with_nothing_to_draw_keeps_the_run_visibly_waiting(run: RunHandle) -> None:
    client = running_client(run)
    assert client.wait(client.send("set_data_mixture", weights={"base": 0.0, "live": 1.0})).status.value == "applied"
    status = wait_until(lambda: (s := client.status())["status"] == "waiting" and s, timeout=60, what="waiting")
    assert "waiting for data: no source with a weight > 0 has rows yet (weights: live=1)" in status["message"]
    x = np.ones((8, 32), np.float32)
    client.ingest(pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 32),
                            "y": pa.array(np.zeros(8, np.float32))}, schema=live_schema(32)), "live")
    wait_until(lambda: client.status()["status"] == "running", timeout=60, what="training on the live rows")
    assert client.status()["message"] is None
    client.wait(client.send("set_data_mixture", weights={"base": 1.0, "live": 0.3}))


def test_far_pinned_commands_block_nothing_and_can_be_cancelled_from_the_cli(
    run: RunHandle, ray_cluster: dict[str, Any]
) -> None:
    client = running_client(run)
    client.wait(client.send("pause"))  # the near step must still be ahead when the command arrives
    step = client.status()["step"]
    far = client.send("set_grad_clip", max_norm=0.125, at_step=step + 10**9)
    assert far.status.value == "accepted"
    near = client.send("set_grad_clip", max_norm=2.0, at_step=step + 30)
    client.wait(client.send("resume"))
    assert client.wait(near, timeout=60).status.value == "applied"  # not held back by the far one
    out = cli(ray_cluster["address"], "cancel", run.config.name, f"#{far.seq}")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "cancel: applied at step" in out.stdout and f"cancelled #{far.seq} set_grad_clip" in out.stdout
    far_now = client.command(far.id)
    assert far_now is not None and far_now.status.value == "cancelled" and "cancelled at step" in far_now.message
    again = client.send("cancel", seq=far.seq)
    assert again.status.value == "rejected" and "is no longer pending: it was cancelled" in again.message
    assert client.snapshot()["grad_clip"] == 2.0
    out = cli(ray_cluster["address"], "log", run.config.name, "-n", "5")
    assert out.returncode == 0 and "cancelled" in out.stdout


def test_checkpoint_ids_are_never_paths_and_are_checked_when_applied(run: RunHandle) -> None:
    client = running_client(run)
    for bad in ("../../../tmp/x@1", "/etc/passwd@1", "main@1/../../x"):
        rec = client.send("load_checkpoint", checkpoint_id=bad, at_step=client.status()["step"] + 1000)
        assert rec.status.value == "rejected" and "is not a checkpoint id" in rec.message
    client.wait(client.send("pause"))  # so that the pinned step is still ahead when the load arrives
    step = client.status()["step"]
    rec = client.send("load_checkpoint", checkpoint_id="main@99999999", at_step=step + 5)
    assert rec.status.value == "accepted"  # a replay's load may name a checkpoint yet to be written
    client.wait(client.send("resume"))
    rec = client.wait(rec, timeout=60)
    assert rec.status.value == "failed" and "no checkpoint 'main@99999999' in this run" in rec.message
    assert client.status()["status"] == "running" and client.status()["branch"] == "main"


def test_reused_ids_and_hostile_payloads_leave_the_history_readable(run: RunHandle, ray_cluster: dict[str, Any]) -> None:
    client = running_client(run)
    first = client.submit({"id": "retry-me", "kind": "set_grad_clip", "max_norm": 1.5})
    assert client.submit({"id": "retry-me", "kind": "set_grad_clip", "max_norm": 1.5}).seq == first.seq
    other = client.submit({"id": "retry-me", "kind": "set_grad_clip", "max_norm": 7.0})
    assert other.status.value == "rejected" and "already taken by" in other.message
    nested: Any = 0
    for _ in range(800):
        nested = [nested]
    for payload in (nested, {"kind": "pause", "comment": "x" * 100_000}, {"kind": "pause", "comment": "\ud800"},
                    {"kind": "set_data_mixture", "weights": {"w" * 5000: 1.0}}, {"kind": "pause", "x": {"y": nested}}):
        rec = client.submit(payload)
        assert rec.status.value == "rejected" and len(rec.message) < 400
    rows = client.commands(newest_first=True)
    json.dumps(rows).encode("utf-8")
    kept = client.command("retry-me")
    assert kept is not None and kept.command.max_norm == 1.5  # type: ignore[union-attr]
    out = cli(ray_cluster["address"], "log", run.config.name, "-n", "10")
    assert out.returncode == 0 and "nested more than 6 levels deep" in out.stdout, out.stderr
    out = cli(ray_cluster["address"], "log", run.config.name, "--json", "-n", "10")
    assert out.returncode == 0 and len(out.stdout) < 40_000
    assert client.status()["status"] == "running"


def test_the_cli_sends_numeric_module_paths_as_the_readme_shows(run: RunHandle, ray_cluster: dict[str, Any]) -> None:
    running_client(run)
    out = cli(ray_cluster["address"], "send", run.config.name, "update_module", "module=3", "op=set_attribute",
              "attribute=p", "value=0.2", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "update_module: applied at step" in out.stdout and "p: 0.1 -> 0.2" in out.stdout


def test_checkpoints_are_retained_by_policy_and_the_controller_knows_which(
    ray_cluster: dict[str, Any], tmp_path: Path, start: Any
) -> None:
    handle = start(regression_config(tmp_path, checkpoint_every=5, checkpoint_keep=3))
    client = handle.client()
    wait_until(lambda: client.status()["step"] >= 12, what="training")
    tagged = client.wait(client.send("save_checkpoint", tag="keep")).message.split("saved ")[1]
    wait_until(lambda: client.status()["step"] >= 80, what="more periodic checkpoints")
    client.wait(client.send("pause"))

    def agree() -> Any:
        listed = {c["id"]: c for c in client.checkpoints()}
        on_disk = {p.name for p in (handle.config.resolved_run_dir / "checkpoints").iterdir()}
        return listed if set(listed) == on_disk else None

    listed = wait_until(agree, timeout=60, what="the controller's list to match the files", state=lambda: (
        sorted(c["id"] for c in client.checkpoints()),
        sorted(p.name for p in (handle.config.resolved_run_dir / "checkpoints").iterdir())))
    periodic = sorted(c["step"] for c in listed.values() if c["reason"] == "periodic")
    assert len(periodic) == 3 and periodic == sorted(periodic)[-3:] and periodic[-1] >= 80
    assert tagged in listed  # tagged: never removed
    page = client.checkpoint_page(0, 2)
    assert page["total"] == len(listed) and len(page["rows"]) == 2
    assert page["rows"][0]["created_at"] >= page["rows"][1]["created_at"]  # newest first
