"""Branching and resuming reproduce training exactly (CPU, fixed threads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray_interactive.core.config import RunConfig

from .conftest import regression_config, wait_until


def losses(client: Any, branch: str, lo: int, hi: int) -> dict[int, float]:
    m = client.metrics(keys=["loss"], branch=branch, since=lo).get("loss", {"step": [], "value": []})
    return {s: v for s, v in zip(m["step"], m["value"]) if lo <= s <= hi}


def test_branch_from_checkpoint_replays_the_original_losses(tmp_path: Path, start: Any) -> None:
    # Paused until the save is queued: a 1.5 ms step would pass step 20 before it arrives.
    handle = start(regression_config(tmp_path, start_paused=True))
    client = handle.client()
    save = client.send("save_checkpoint", tag="fork", at_step=20)  # exactly at step 20
    client.send("resume")
    save = client.wait(save)
    assert save.status.value == "applied" and save.applied_step == 20
    ckpt = save.message.removeprefix("saved ")
    wait_until(lambda: client.status()["step"] >= 45, what="main to pass step 45")

    load = client.wait(client.send("load_checkpoint", checkpoint_id=ckpt, branch="b"))
    assert load.status.value == "applied", load.message
    assert client.status()["branch"] == "b"
    wait_until(lambda: len(losses(client, "b", 21, 45)) == 25, what="branch b to reach step 45")
    client.wait(client.send("save_checkpoint", tag="on-b"))
    client.wait(client.send("pause"))

    main, b = losses(client, "main", 21, 45), losses(client, "b", 21, 45)
    assert len(main) == 25
    assert b == main  # bit-identical: model, optimizer, RNG and data position restored

    # Both branches' metrics and checkpoints are kept; the tree says where b came from.
    assert losses(client, "main", 1, 20)
    branches = client.branches()
    assert branches["b"]["parent"] == "main" and branches["b"]["checkpoint"] == ckpt and branches["b"]["fork_step"] == 20
    by_branch = {c["branch"] for c in client.checkpoints()}
    assert by_branch == {"main", "b"}
    # The whole lineage of b: main up to 20, then b.
    steps = client.metrics(keys=["loss"], branch="b", include_ancestors=True)["loss"]["step"]
    assert steps[:20] == list(range(1, 21)) and steps[20] == 21


def test_resumed_run_continues_with_the_uninterrupted_losses(tmp_path: Path, start: Any) -> None:
    whole = start(regression_config(tmp_path / "whole", name="whole", max_steps=60))
    whole.wait(timeout=120)
    expected = losses(whole.client(), "main", 31, 60)
    assert len(expected) == 30

    first = start(regression_config(tmp_path / "parts", name="parts", max_steps=30))
    final = first.wait(timeout=120)
    assert final["status"] == "stopped" and final["step"] == 30
    assert first.client().checkpoints()[-1]["reason"] == "final"
    first.shutdown()

    config = RunConfig.load(tmp_path / "parts" / "run" / "config.json").model_copy(update={"max_steps": 60})
    resumed = start(config, resume=True)
    resumed.wait(timeout=120)
    client = resumed.client()
    assert losses(client, "main", 31, 60) == expected
    assert sorted(losses(client, "main", 1, 30)) == list(range(1, 31))  # history recovered from disk


def test_stop_finishes_the_step_and_writes_a_final_checkpoint(tmp_path: Path, start: Any) -> None:
    handle = start(regression_config(tmp_path))
    client = handle.client()
    wait_until(lambda: client.status()["step"] > 3, what="steps")
    rec = client.stop()
    assert rec.status.value == "applied"
    final = handle.wait(timeout=60)
    assert final["status"] == "stopped"
    ckpt = client.checkpoints()[-1]
    assert ckpt["reason"] == "final" and ckpt["step"] == final["step"] == rec.applied_step
    assert client.send("resume").status.value == "rejected"  # a stopped run takes no commands


def test_replaying_the_command_log_reproduces_the_run(tmp_path: Path, start: Any) -> None:
    from ray_interactive.runtime.launch import replay_run

    original = start(regression_config(tmp_path / "orig", name="orig", checkpoint_every=25))
    client = original.client()
    wait_until(lambda: client.status()["step"] >= 10, what="steps")
    client.wait(client.send("update_optimizer", params={"lr": 3e-3}))
    client.wait(client.send("set_grad_clip", max_norm=0.1))
    saved = client.wait(client.send("save_checkpoint", tag="x"))
    wait_until(lambda: client.status()["step"] >= saved.applied_step + 20, what="steps")
    # Sent back to back: the clip is applied on the branch at a step *below* the load's
    # (the branch restarts from the checkpoint's step); a replay must keep the order.
    load_cmd = client.send("load_checkpoint", checkpoint_id=saved.message.removeprefix("saved "), branch="again")
    clip_cmd = client.send("set_grad_clip", max_norm=0.3)
    load = client.wait(load_cmd)
    assert load.status.value == "applied", load.message
    on_branch = client.wait(clip_cmd)
    assert on_branch.branch == "again" and on_branch.applied_step < load.applied_step
    wait_until(lambda: client.status()["step"] >= load.applied_step + 20, what="steps on the branch")
    client.stop()
    original.wait(timeout=60)
    end = {b: max(losses(client, b, 0, 10**9)) for b in ("main", "again")}  # last step of each
    want = {b: losses(client, b, 1, end[b]) for b in ("main", "again")}
    original.shutdown()

    replay = replay_run(tmp_path / "orig" / "run", "replayed", tmp_path / "replayed")
    try:
        replay.wait(timeout=120)
        rc = replay.client()
        assert {b: losses(rc, b, 1, end[b]) for b in ("main", "again")} == want
        assert {r["source"] for r in rc.commands()} == {"replay"}
        assert rc.status()["step"] == end["again"]
    finally:
        replay.shutdown()


def test_after_a_load_mixture_commands_are_checked_against_the_restored_mixture(tmp_path: Path, start: Any) -> None:
    """A checkpoint restores the data position, mixture included; the controller must
    validate later mixture commands against that, not the mixture the old branch had."""
    handle = start(regression_config(tmp_path, task_kwargs={"extra_source": True}))
    client = handle.client()
    saved = client.wait(client.send("save_checkpoint"))  # base 1.0, extra 0.5
    assert client.wait(client.send("set_data_mixture", weights={"extra": 0.0})).status.value == "applied"
    assert client.snapshot()["mixture"] == {"base": 1.0, "extra": 0.0}
    load = client.wait(client.send("load_checkpoint", checkpoint_id=saved.message.removeprefix("saved ")))
    assert load.status.value == "applied", load.message
    assert client.snapshot()["mixture"] == {"base": 1.0, "extra": 0.5}
    rec = client.send("set_data_mixture", weights={"base": 0.0})  # extra keeps 0.5: valid
    assert rec.status.value == "accepted", rec.message
    assert client.wait(rec).status.value == "applied"
