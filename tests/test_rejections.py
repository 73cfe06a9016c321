"""Bad commands are rejected at submission with a readable reason; the run trains on."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_interactive.core.commands import COMMAND_KINDS
from ray_interactive.runtime.launch import RunHandle, start_run

from .conftest import assert_plain, regression_config, wait_until

BAD = [
    ({"kind": "update_optimizer", "params": {"lr": -1e-3}}, "lr must be in (0, 10], not -0.001"),
    ({"kind": "update_optimizer", "params": {"lr": 0}}, "lr must be in (0, 10], not 0"),
    ({"kind": "update_optimizer", "params": {"lr": math.nan}}, "lr must be finite, not nan"),
    ({"kind": "update_optimizer", "params": {"lr": math.inf}}, "lr must be finite, not inf"),
    ({"kind": "update_optimizer", "params": {"lr": 11.0}}, "lr must be in (0, 10], not 11"),
    ({"kind": "update_optimizer", "params": {"lr": "1e-3"}}, "lr must be a number, got '1e-3'"),
    ({"kind": "update_optimizer", "params": {"lr": {"value": 1}}}, "lr must be a number, got an object with 1 key(s)"),
    ({"kind": "update_optimizer", "params": {"lr": True}}, "lr must be a number, got true"),
    ({"kind": "update_optimizer", "params": {"momentum": 0.9}}, "unknown hyperparameter 'momentum'"),
    ({"kind": "update_optimizer", "params": {"params": []}}, "'params' is not a hyperparameter"),
    ({"kind": "update_optimizer", "params": {"betas": [0.9]}}, "betas must be a list of 2 numbers"),
    ({"kind": "update_optimizer", "params": {"betas": [0.9, 1.5]}}, "betas[1] must be in [0, 1)"),
    ({"kind": "update_optimizer", "params": {"lr": 1e-3}, "group": "heads"}, "no param group named 'heads'; groups: decay, no_decay"),
    ({"kind": "update_optimizer", "params": {}}, "params"),
    ({"kind": "update_module", "module": "encoder.9", "op": "freeze"}, "no module named 'encoder.9'"),
    ({"kind": "update_module", "module": "0", "op": "set_attribute", "attribute": "weight", "value": 1.0}, "attribute 'weight' of '0' (Linear) cannot be set; settable: none"),
    ({"kind": "update_module", "module": "3", "op": "set_attribute", "attribute": "p", "value": 1.5}, "p must be in [0, 1], not 1.5"),
    ({"kind": "update_module", "module": "2", "op": "freeze"}, "has no parameters to freeze"),
    ({"kind": "update_module", "module": "0", "op": "set_attribute"}, "set_attribute needs both 'attribute' and 'value'"),
    ({"kind": "update_module", "module": "0", "op": "__class__"}, "op"),
    ({"kind": "load_checkpoint", "checkpoint_id": "main@999999"}, "no checkpoint with id 'main@999999'"),
    ({"kind": "load_checkpoint", "checkpoint_id": "x", "branch": "../etc"}, "branch '../etc' is not a valid name"),
    ({"kind": "set_data_mixture", "weights": {"web": 1.0}}, "unknown data source(s) 'web'; sources: base"),
    ({"kind": "set_data_mixture", "weights": {"base": -1.0}}, "weight of source 'base' must be a finite number >= 0"),
    ({"kind": "set_data_mixture", "weights": {"base": 0.0}}, "at least one source must keep a weight > 0"),
    ({"kind": "set_grad_clip", "max_norm": -1}, "max_norm"),
    ({"kind": "set_grad_accumulation", "steps": 0}, "steps"),
    ({"kind": "set_lr_schedule", "schedule": "cosine"}, "a cosine schedule needs 'steps'"),
    ({"kind": "set_lr_schedule", "schedule": "exponential", "steps": 3}, "schedule"),
    ({"kind": "pause", "at_step": 0}, "at_step 0 has already passed"),
    ({"kind": "pause", "force": True}, "unknown field 'force'"),
    ({"kind": "fly"}, "unknown command kind 'fly'"),
    ({"params": {"lr": 1}}, "the command has no 'kind'"),
    ("not json", "the command is not valid JSON"),
    ([1, 2, 3], "a command must be a JSON object with a 'kind', not list"),
    (None, "a command must be a JSON object"),
    # type errors are one plain sentence, a union's members too (not pydantic's value.float: ...)
    ({"kind": "update_module", "module": "3", "op": "set_attribute", "attribute": "p", "value": "abc"},
     "value must be a number or true/false, got 'abc'"),
    ({"kind": "pause", "source": "root"}, "unknown source 'root'; sources: ui, agent, api, cli, replay, system"),
    # refused by the client: Ray could not serialise it, or a check would overflow on it
    ({"kind": "pause", "comment": threading.Lock()}, "comment is a lock: a command holds only text, numbers"),
    ({"kind": "update_optimizer", "params": {"lr": 10**400}}, "params.lr is too large"),
]


@pytest.fixture(scope="module")
def run(ray_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunHandle]:
    handle = start_run(regression_config(tmp_path_factory.mktemp("rej"), checkpoint_every=None))
    client = handle.client()
    wait_until(lambda: client.status()["step"] > 5, what="training")
    yield handle
    handle.shutdown()


@pytest.mark.parametrize("payload,reason", BAD, ids=[str(i) for i in range(len(BAD))])
def test_rejected_with_reason_and_training_goes_on(run: RunHandle, payload: Any, reason: str) -> None:
    client = run.client()
    step = client.status()["step"]
    rec = client.submit(payload)
    assert rec.status.value == "rejected"
    assert reason in assert_plain(rec.message), rec.message
    assert rec.seq is None  # never numbered, never delivered
    wait_until(lambda: client.status()["step"] > step, what="the run to keep training")
    assert client.status()["status"] == "running"


def test_a_source_given_apart_from_the_command_names_the_valid_ones(run: RunHandle) -> None:
    client = run.client()
    for source in ("root", 5):
        rec = client.send("pause", source=source)  # type: ignore[arg-type]
        assert rec.status.value == "rejected"
        assert f"unknown source {source!r}; sources: ui, agent, api, cli, replay, system" in assert_plain(rec.message)
    assert client.status()["status"] == "running"


def test_evaluate_without_eval_task_is_rejected(ray_cluster: dict[str, Any], tmp_path: Path, start: Any) -> None:
    handle = start(regression_config(tmp_path, target="ray_interactive.examples.regression:NoEvalRegressionTask"))
    rec = handle.client().send("evaluate")
    assert rec.status.value == "rejected"
    assert "this task has no evaluation" in rec.message


def test_rejections_are_in_the_command_log(run: RunHandle) -> None:
    client = run.client()
    rec = client.send("update_optimizer", params={"lr": -5})
    lines = (Path(run.config.resolved_run_dir) / "commands.jsonl").read_text().splitlines()
    mine = [json.loads(x) for x in lines if rec.id in x]
    assert mine and mine[-1]["status"] == "rejected" and "lr must be" in mine[-1]["message"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
# Payloads that look like commands (so they reach the deeper checks) but with random fields.
# pause/stop/load are left out: a valid one would (rightly) pause or end the run.
fuzz_kinds = st.sampled_from([k for k in COMMAND_KINDS if k not in ("pause", "stop", "load_checkpoint")])
command_like = st.builds(
    lambda kind, fields: {"kind": kind, **fields},
    fuzz_kinds,
    st.dictionaries(
        st.sampled_from(["params", "group", "module", "op", "attribute", "value", "weights", "steps", "max_norm", "schedule", "tag", "at_step", "source", "id"]),
        json_values | st.dictionaries(st.sampled_from(["lr", "eps", "betas", "weight_decay", "base", "0", "3"]), json_values, max_size=3),
        max_size=4,
    ),
)


@pytest.fixture(scope="module")
def fuzz_run(ray_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunHandle]:
    handle = start_run(regression_config(tmp_path_factory.mktemp("fuzz")))
    client = handle.client()
    client.wait(client.send("save_checkpoint", tag="before-fuzz"))
    yield handle
    handle.shutdown()


def recover_from_the_guard(client: Any) -> None:
    """A fuzzed lr and weight_decay can be valid alone and explosive together: then the
    health guard has paused the run, saying so (its job). Go back to the checkpoint saved
    before fuzzing (it restores sane hyperparameters too)."""
    status = client.status()
    if status["status"] == "paused" and "health guard" in (status["message"] or ""):
        ckpt = next(c["id"] for c in client.checkpoints() if c.get("tag") == "before-fuzz")
        assert client.wait(client.send("load_checkpoint", checkpoint_id=ckpt)).status.value == "applied"


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=json_values | command_like)
def test_fuzzed_payloads_never_crash_or_stall_the_run(fuzz_run: RunHandle, payload: Any) -> None:
    client = fuzz_run.client()
    rec = client.submit(payload)
    assert rec.status.value in ("accepted", "rejected")
    if rec.status.value == "rejected":
        assert_plain(rec.message)
    else:
        rec = client.wait(rec, timeout=60)
        assert rec.status.value in ("applied", "failed")
    # Undo what a valid fuzz command may have done that would slow the next examples.
    if rec.kind == "set_grad_accumulation" and rec.status.value == "applied":
        client.wait(client.send("set_grad_accumulation", steps=1))


def test_after_fuzzing_the_run_still_trains(fuzz_run: RunHandle) -> None:
    client = fuzz_run.client()
    recover_from_the_guard(client)
    client.wait(client.send("resume"))
    step = client.status()["step"]
    wait_until(lambda: client.status()["step"] > step + 5, what="training after fuzzing")
    assert client.status()["status"] == "running"
    assert all(r["status"] != "accepted" for r in client.commands()[:-1])  # nothing left hanging


# -- hostile payloads, reused ids and combinations (the hardening issue) -------------------------
def _nest(depth: int) -> Any:
    value: Any = {"kind": "pause"}
    for _ in range(depth):
        value = [value]
    return value


hostile_strings = st.sampled_from(["\ud800", "ok\udfffok", "x" * 5000, "../../etc@1", "/abs@2", "a b", "", "é" * 70])
hostile = st.one_of(
    st.integers(7, 3000).map(_nest),
    st.builds(lambda k, v: {"kind": k, "comment": v}, st.sampled_from(["pause", "resume"]), hostile_strings),
    st.builds(lambda v: {"kind": "set_data_mixture", "weights": {v: 1.0}}, hostile_strings),
    st.builds(lambda v: {"kind": "load_checkpoint", "checkpoint_id": v, "at_step": 10**9}, hostile_strings),
    st.builds(lambda v: {"kind": "update_module", "module": v, "op": "freeze"}, hostile_strings),
    st.builds(lambda v: {"kind": "save_checkpoint", "tag": v, "id": v}, hostile_strings),
    st.builds(lambda w: {"kind": "set_data_mixture", "weights": {"base": w}}, st.sampled_from([1e308, 1e7, -0.0, 0.0])),
    st.builds(lambda n: {"kind": "update_optimizer", "params": {"lr": list(range(n))}}, st.integers(3000, 6000)),
)
# A few fixed ids, so that examples reuse them with the same or another payload.
reused = st.builds(
    lambda cid, clip: {"id": cid, "kind": "set_grad_clip", "max_norm": clip},
    st.sampled_from(["agent-1", "agent-2"]),
    st.sampled_from([0.5, 1.0, 2.0]),
)
# Valid commands that together could freeze everything, pin far ahead, or cancel each other.
combo_step = st.one_of(
    st.builds(lambda m: {"kind": "update_module", "module": m, "op": "freeze"}, st.sampled_from(["0", "1", "4", "5", "8"])),
    st.builds(lambda m: {"kind": "update_module", "module": m, "op": "unfreeze"}, st.sampled_from(["0", "4", "8"])),
    st.builds(lambda d: {"kind": "set_grad_clip", "max_norm": 1.0, "at_step": d}, st.integers(10**6, 10**11)),
    st.builds(lambda s: {"kind": "cancel", "seq": s}, st.integers(1, 400)),
    st.just({"kind": "set_data_mixture", "weights": {"base": 1.0}}),
)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(payloads=st.lists(hostile | reused | combo_step, min_size=1, max_size=5))
def test_hostile_payloads_reused_ids_and_combinations_never_break_the_run(fuzz_run: RunHandle, payloads: list[Any]) -> None:
    client = fuzz_run.client()
    for payload in payloads:
        rec = client.submit(payload)
        retry = isinstance(payload, dict) and str(payload.get("id", "")).startswith("agent-")
        assert rec.status.value in (("accepted", "rejected", "applied", "failed", "cancelled") if retry else ("accepted", "rejected"))
        if rec.status.value == "rejected":
            assert_plain(rec.message, limit=1200)
    # Withdraw what is still pending (far-pinned commands), which exercises cancel too.
    for row in client.commands(limit=50, newest_first=True):
        if row["status"] == "accepted" and row["kind"] != "cancel":
            client.send("cancel", seq=row["seq"])
    json.dumps(client.commands(newest_first=True, limit=100)).encode("utf-8")  # the history stays readable


def test_after_hostile_fuzzing_the_run_trains_and_nothing_trainable_was_lost(fuzz_run: RunHandle) -> None:
    client = fuzz_run.client()
    recover_from_the_guard(client)
    for m in ("0", "1", "4", "5", "8"):
        client.wait(client.send("update_module", module=m, op="unfreeze"), timeout=60)
    client.wait(client.send("resume"))
    step = client.status()["step"]
    wait_until(lambda: client.status()["step"] > step + 5, timeout=60, what="training after fuzzing")
    assert client.status()["status"] == "running"
    assert client.snapshot()["trainable"] > 0
    wait_until(lambda: not [r for r in client.commands(limit=400) if r["status"] == "accepted"], timeout=60,
               what="every accepted command to be applied, failed or cancelled")
