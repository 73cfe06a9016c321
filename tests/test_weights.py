"""Publishing weights to deployed models: pack/unpack, the registry, and end to end on a
real run (a subscriber that follows, one that is pinned, a rollback, a load, a resume,
and a subscriber in another process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ray_interactive.core.config import RunConfig, TaskSpec
from ray_interactive.core.controller import Controller
from ray_interactive.core.weights import (
    BackgroundPublisher,
    LocalPublisher,
    PackedState,
    WeightRegistry,
    WeightVersion,
    pack_state,
    unpack_state,
)
from ray_interactive.examples.regression import RegressionTask
from ray_interactive.runtime.client import RunClient
from ray_interactive.runtime.launch import RunHandle, start_run

from .conftest import REGRESSION, REPO, regression_config, running_client, wait_until


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


# -- pack / unpack -------------------------------------------------------------------------
class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight  # tied, as in GPT-2
        self.norm = nn.BatchNorm1d(4)  # buffers, one of them int64


def test_pack_unpack_round_trip_with_buffers_and_tied_weights() -> None:
    model = Tied()
    packed = pack_state(model)
    assert packed.aliases == {"head.weight": "emb.weight"}  # copied once
    assert packed.arrays["norm.num_batches_tracked"].dtype == np.int64
    assert packed.num_params == 40 + 4 * 4 + 1 and packed.nbytes == sum(a.nbytes for a in packed.arrays.values())
    other = Tied()
    other.load_state_dict(unpack_state(packed))
    assert same_state(other.state_dict(), model.state_dict())
    with torch.no_grad():  # a copy: training on does not change what was published
        model.emb.weight.add_(1.0)
    assert not torch.equal(torch.from_numpy(packed.arrays["emb.weight"]), model.emb.weight)


def test_bfloat16_and_other_non_numpy_dtypes_round_trip() -> None:
    state = {
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "scalar": torch.tensor(1.5, dtype=torch.bfloat16),
        "f8": torch.randn(4).to(torch.float8_e4m3fn),
        "f32": torch.randn(2, 2),
        "flag": torch.tensor([True, False]),
        "strided": torch.randn(4, 6).t(),  # not contiguous
    }
    packed = pack_state(state)
    assert packed.dtypes == {"bf16": "bfloat16", "scalar": "bfloat16", "f8": "float8_e4m3fn"}
    assert packed.arrays["bf16"].dtype == np.int16 and packed.arrays["f8"].dtype == np.uint8
    assert packed.arrays["strided"].flags.c_contiguous
    out = unpack_state(packed)
    for k, v in state.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        assert torch.equal(out[k].view(torch.uint8), v.contiguous().view(torch.uint8)) if k == "f8" else torch.equal(out[k], v)


def test_unpack_of_read_only_arrays_does_not_warn() -> None:
    """Arrays from the object store are read-only; loading them must not warn."""
    packed = pack_state(nn.Linear(3, 2))
    for a in packed.arrays.values():
        a.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = nn.Linear(3, 2)
        model.load_state_dict(unpack_state(packed))
    assert torch.equal(model.weight, torch.from_numpy(packed.arrays["weight"].copy()))


# -- registry and publishers ---------------------------------------------------------------
def meta(step: int, ref: Any = None, **kw: Any) -> WeightVersion:
    """A version's metadata (version 0: numbered by the registry) pointing at ``ref``."""
    return WeightVersion(**{"version": 0, "step": step, "branch": "main", "time": time.time(), "reason": "periodic",
                            **kw}, ref=ref)


def test_registry_numbers_keeps_the_last_and_explains_missing_versions() -> None:
    reg = WeightRegistry(keep=3)
    assert reg.latest() is None and reg.newer_than(None) is None
    entries = [reg.add(meta(10 * i, f"ref{i}")) for i in range(5)]
    assert [e.version for e in entries] == [1, 2, 3, 4, 5]
    assert [v["version"] for v in reg.versions()] == [3, 4, 5]  # the oldest are dropped
    assert all("ref" not in v for v in reg.versions())
    assert reg.get(4).ref == "ref3" and reg.latest().version == 5
    with pytest.raises(ValueError, match=r"no weights version 1: it is no longer kept \(the run keeps the last 3\); available: 3, 4, 5"):
        reg.get(1)
    with pytest.raises(ValueError, match="no weights version 9: it has not been published yet"):
        reg.get(9)
    assert reg.newer_than(4).version == 5 and reg.newer_than(5) is None


def test_registry_takes_versions_numbered_by_the_trainer_in_any_order() -> None:
    reg = WeightRegistry(keep=8, next_version=7)
    reg.add(meta(20, "b", version=8))
    reg.add(meta(10, "a", version=7))  # arrived late (threaded actor calls may be reordered)
    assert reg.latest().version == 8 and reg.next_version == 9
    assert reg.add(meta(30, "c")).version == 9
    with pytest.raises(ValueError, match="already published"):
        reg.add(meta(30, "d", version=9))


def test_background_publisher_keeps_order_and_flushes() -> None:
    reported: list[tuple[int, Any]] = []
    gate = threading.Event()

    def put(packed: PackedState) -> Any:
        gate.wait(5)
        return ("ref", packed.num_params)

    pub = BackgroundPublisher(put, lambda v: reported.append((v.version, v.ref)), max_pending=2)
    packed = pack_state(nn.Linear(2, 2))
    t0 = time.perf_counter()
    pub.publish(meta(1, version=1, hold_s=0.0), packed)
    pub.publish(meta(2, version=2, hold_s=0.0), packed)
    assert time.perf_counter() - t0 < 1.0  # handed over, not put yet
    assert reported == []
    gate.set()
    pub.flush(timeout=5)
    assert reported == [(1, ("ref", 6)), (2, ("ref", 6))]
    pub.close()

    local = LocalPublisher()
    local.publish(meta(5, version=3), packed)
    assert local.registry.get(3).ref is packed and local.registry.get(3).published_at is not None


def test_an_in_process_trainer_publishes_through_a_local_publisher(tmp_path: Path) -> None:
    from ray_interactive.core.commands import CommandRecord, CommandStatus, PublishWeights
    from ray_interactive.core.reporting import Reporter
    from ray_interactive.data.buffer import DataBuffer
    from ray_interactive.data.feeds import LocalFeed
    from ray_interactive.train.trainer import Trainer

    cfg = regression_config(tmp_path, max_steps=12, publish_every=5, task_kwargs={"width": 8, "depth": 1, "rows": 256})
    task = RegressionTask(width=8, depth=1, rows=256)
    publisher = LocalPublisher()
    trainer = Trainer(
        cfg, task, lambda _: LocalFeed(DataBuffer(task.data_sources(), seed=0), 16), Reporter(None), publisher=publisher
    )
    trainer.deliver([CommandRecord(command=PublishWeights(), seq=1, status=CommandStatus.ACCEPTED)])
    trainer.run()
    got = [(v["version"], v["step"], v["reason"]) for v in publisher.registry.versions()]
    assert got == [(1, 0, "start"), (2, 0, "command"), (3, 5, "periodic"), (4, 10, "periodic"), (5, 12, "final")]
    final = publisher.registry.latest()
    assert final is not None and same_state(unpack_state(final.ref), trainer.model.state_dict())
    assert 0 < final.hold_s < 1 and final.nbytes == final.ref.nbytes


# -- end to end ----------------------------------------------------------------------------
def build_model() -> nn.Module:
    return RegressionTask().build_model()


@pytest.fixture(scope="module")
def run(ray_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunHandle]:
    config = regression_config(tmp_path_factory.mktemp("weights"), publish_every=25, weights_keep=10_000)
    handle = start_run(config)
    yield handle
    handle.shutdown()


@pytest.fixture
def client(run: RunHandle) -> RunClient:
    return running_client(run)


def applied(client: RunClient, kind: str, **fields: Any) -> Any:
    rec = client.wait(client.send(kind, **fields), timeout=30)
    assert rec.status.value == "applied", rec.message
    return rec


def published_version(rec: Any) -> int:
    """The version number an applied command's message names."""
    return int(rec.message.split("published weights version ")[1].split()[0].rstrip(";"))


def test_a_subscriber_follows_increasing_versions(client: RunClient) -> None:
    wait_until(lambda: client.weight_version(), what="a first version")
    first = client.weight_versions()[0]
    assert first["reason"] == "start" and first["step"] == 0 and first["version"] >= 1
    model = build_model()
    swaps: list[int] = []
    sub = client.subscribe(model, on_swap=lambda v: swaps.append(v.version)).start()
    try:
        wait_until(lambda: len(swaps) >= 4, timeout=60, what="four swaps")
    finally:
        sub.stop()
    assert swaps == sorted(set(swaps))  # strictly increasing
    loaded = sub.loaded
    assert loaded is not None and loaded.step % 25 == 0 and loaded.reason in ("start", "periodic")
    assert loaded.num_params == sum(p.numel() for p in model.state_dict().values())
    assert loaded.nbytes == 4 * loaded.num_params and loaded.published_at >= loaded.time
    assert same_state(model.state_dict(), dict(client.fetch_weights(loaded)))
    versions = client.weight_versions()
    assert [v["version"] for v in versions] == list(range(versions[0]["version"], versions[-1]["version"] + 1))
    assert client.status()["weights_version"] >= loaded.version


def test_published_weights_are_the_trainers_weights(run: RunHandle, client: RunClient) -> None:
    """While paused, publish and checkpoint at one step: the subscriber's module holds
    exactly the checkpointed weights."""
    applied(client, "pause")
    pub = applied(client, "publish_weights", comment="for the demo")
    version = published_version(pub)
    assert pub.message == f"published weights version {version} at step {pub.applied_step}"
    saved = applied(client, "save_checkpoint")
    assert saved.applied_step == pub.applied_step
    entry, state = client.latest_weights(after=version - 1, timeout=30)
    assert entry.version == version and entry.reason == "command" and entry.step == pub.applied_step
    model = build_model()
    model.load_state_dict(state)
    ckpt = load_file(str(Path(run.config.resolved_run_dir) / "checkpoints" / saved.message.removeprefix("saved ") / "model.safetensors"))
    assert same_state(model.state_dict(), ckpt)
    assert client.latest_weights(after=version) is None  # nothing newer while paused
    assert client.latest_weights(after=version, timeout=0.3) is None


def test_a_pinned_subscriber_stays_put_and_rollback_returns(client: RunClient) -> None:
    v0 = wait_until(lambda: client.weight_version(), what="a version").version
    pinned_model, follower_model = build_model(), build_model()
    pinned = client.subscribe(pinned_model, pin=v0)
    follower = client.subscribe(follower_model)
    assert pinned.loaded.version == v0 and pinned.pinned == v0
    wait_until(lambda: client.weight_version().version >= v0 + 3, what="newer versions")
    assert pinned.refresh() is None and pinned.loaded.version == v0  # stays put
    assert same_state(pinned_model.state_dict(), client.weights(v0)[1])

    first = follower.refresh()
    assert first is not None and first.version >= v0 + 3
    wait_until(lambda: client.weight_version().version > first.version, what="a newer version")
    second = follower.refresh()
    assert second is not None and second.version > first.version
    assert not same_state(follower_model.state_dict(), pinned_model.state_dict())

    back = follower.rollback()  # to the version loaded before
    assert back.version == first.version and follower.pinned == first.version
    assert same_state(follower_model.state_dict(), dict(client.fetch_weights(first)))
    assert follower.refresh() is None  # pinned by the rollback
    assert follower.follow().version >= second.version  # and back to following

    with pytest.raises(ValueError, match="nothing to roll back to"):
        pinned.rollback()
    with pytest.raises(ValueError, match="no weights version 999999: it has not been published yet; available: "):
        client.weights(999_999)


def test_load_checkpoint_publishes_the_new_branch(run: RunHandle, client: RunClient) -> None:
    saved = applied(client, "save_checkpoint", tag="wfork")
    cid = saved.message.removeprefix("saved ")
    wait_until(lambda: client.status()["step"] >= saved.applied_step + 30, what="steps")
    load = applied(client, "load_checkpoint", checkpoint_id=cid, branch="wbranch")
    version = published_version(load)
    # The number is given at the step; the object store put and its report follow off the loop.
    wait_until(lambda: any(v["version"] == version for v in client.weight_versions()), what=f"version {version}")
    entry, state = client.weights(version)
    assert (entry.branch, entry.step, entry.reason) == ("wbranch", saved.applied_step, "load_checkpoint")
    ckpt = load_file(str(Path(run.config.resolved_run_dir) / "checkpoints" / cid / "model.safetensors"))
    assert same_state(dict(state), ckpt)
    before = [v for v in client.weight_versions() if v["version"] < version]
    assert before and all(v["time"] <= entry.time for v in before)  # numbers follow publishing order
    wait_until(lambda: client.weight_version().version > version, what="a version on the branch")
    after = [v for v in client.weight_versions() if v["version"] > version]
    assert after and all(v["branch"] == "wbranch" and v["step"] > entry.step for v in after)
    lines = (Path(run.config.resolved_run_dir) / "weights.jsonl").read_text().splitlines()
    assert any(json.loads(x)["version"] == version and json.loads(x)["branch"] == "wbranch" for x in lines)


SUBSCRIBER = textwrap.dedent(
    """
    import json, sys, time
    import ray_interactive as ri
    from ray_interactive.examples.regression import RegressionTask

    run, address, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = ri.connect(run, address=address)
    model = RegressionTask().build_model()
    sub = client.subscribe(model).start()
    deadline = time.monotonic() + 60
    while (sub.loaded is None or sub.loaded.version < after) and time.monotonic() < deadline:
        time.sleep(0.01)
    print("ready", sub.loaded.version, flush=True)
    while sub.loaded.version <= after and time.monotonic() < deadline:
        time.sleep(0.01)
    sub.stop()
    with sub.lock:
        state = {k: v.double().sum().item() for k, v in model.state_dict().items()}
    print(json.dumps({"version": sub.loaded.version, "branch": sub.loaded.branch, "sums": state}), flush=True)
    """
)


def test_many_waiting_subscribers_leave_the_controller_responsive(run: RunHandle, client: RunClient) -> None:
    import ray

    from ray_interactive.runtime.controller_actor import MAX_WEIGHT_WAITERS

    never = 10**9
    t0 = time.monotonic()
    # The waiters wait 8 s; the ones over the limit must come back long before (loose bounds: a loaded CI box)
    calls = [run.controller.wait_weights.remote(never, 8.0) for _ in range(MAX_WEIGHT_WAITERS + 4)]
    ready, _ = ray.wait(calls, num_returns=4, timeout=6.0)
    assert len(ready) == 4 and ray.get(ready) == [None] * 4
    assert client.status()["status"] == "running" and time.monotonic() - t0 < 7.0  # not starved
    assert ray.get(calls) == [None] * len(calls)
    assert client.latest_weights(after=never, timeout=0.5) is None


def line_starting(proc: subprocess.Popen[str], prefix: str) -> str:
    """The next line of the subprocess's output that starts with ``prefix``."""
    assert proc.stdout is not None and proc.stderr is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return line
    proc.wait(10)
    raise AssertionError(f"the subscriber ended (rc {proc.returncode}): {proc.stderr.read()[-3000:]}")


def test_a_subscriber_in_another_process_hot_swaps(ray_cluster: dict[str, Any], client: RunClient) -> None:
    applied(client, "pause")  # no periodic versions: the next one is the command's
    # A periodic version of the pause's step may still be on its way: publish one and wait for it.
    current = published_version(applied(client, "publish_weights"))
    wait_until(lambda: client.weight_version().version == current, what="the version published while paused")
    proc = subprocess.Popen(
        [sys.executable, "-c", SUBSCRIBER, client.run, ray_cluster["address"], str(current)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=dict(os.environ),
    )
    try:
        ready = line_starting(proc, "ready").split()
        assert ready == ["ready", str(current)]
        pub = applied(client, "publish_weights")
        out = json.loads(line_starting(proc, "{"))
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    version = published_version(pub)
    assert out["version"] == version
    _, state = client.weights(version)
    assert out["sums"] == {k: v.double().sum().item() for k, v in state.items()}


def test_cli_lists_versions_and_sends_publish_weights(ray_cluster: dict[str, Any], client: RunClient) -> None:
    cli = [str(Path(sys.executable).parent / "ray-interactive"), "--address", ray_cluster["address"]]
    out = subprocess.run([*cli, "send", client.run, "publish_weights", "--wait"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "publish_weights: applied at step" in out.stdout and "published weights version" in out.stdout
    out = subprocess.run([*cli, "weights", client.run], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(x.startswith("v") and " command " in x for x in lines)
    assert len(lines) >= 2 and all(x.startswith("v") and "M params" in x and "branch" in x for x in lines)


def test_a_run_publishes_at_start_every_n_steps_and_at_the_end(tmp_path: Path, start: Any) -> None:
    handle = start(regression_config(tmp_path, max_steps=25, publish_every=10))
    assert handle.wait(timeout=120)["step"] == 25
    got = [(v["version"], v["step"], v["reason"]) for v in handle.client().weight_versions()]
    assert got == [(1, 0, "start"), (2, 10, "periodic"), (3, 20, "periodic"), (4, 25, "final")]


def test_version_numbers_go_on_after_a_resume(tmp_path: Path) -> None:
    """The controller logs each version to weights.jsonl; a resumed run numbers on from there."""
    config = RunConfig(name="unit", task=TaskSpec(target=REGRESSION), run_dir=tmp_path, weights_keep=2)
    c = Controller(config)
    for step in (0, 10, 20):
        c.weights_published(meta(step, f"ref{step}", version=c.next_weight_version()))
    assert [v["version"] for v in c.weight_versions()] == [2, 3]  # keeps 2
    latest = c.weights()
    assert (latest.to_dict(), latest.ref) == (c.weight_versions()[-1], "ref20") and c.status()["weights_version"] == 3
    with pytest.raises(ValueError, match="no weights version 1: it is no longer kept"):
        c.weights(1)
    c.close()
    lines = [json.loads(x) for x in (tmp_path / "weights.jsonl").read_text().splitlines()]
    assert [x["version"] for x in lines] == [1, 2, 3] and "ref" not in lines[0]
    recovered = Controller(config, recover=True)
    assert recovered.weights() is None and recovered.next_weight_version() == 4
    recovered.close()
