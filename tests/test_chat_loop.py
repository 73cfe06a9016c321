"""The chat model's training loop on a real run (a tiny Llama with SmolLM2's tokenizer):
users' corrections ingested into the live source are trained on at once, and what is
checkpointed and published is the LoRA adapter alone, which a replica loads over its base."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from ray_interactive.core.config import RunConfig, TaskSpec
from ray_interactive.examples.chat_corrections import FEEDBACK, REPLAY, build_chat_model, feedback_schema

from .conftest import wait_until

CHAT = "ray_interactive.examples.chat_corrections:ChatCorrectionsTask"


def test_corrections_train_the_adapter_which_alone_is_checkpointed_and_published(tmp_path: Path, start: Any) -> None:
    config = RunConfig(
        name=f"chat-{uuid.uuid4().hex[:8]}", run_dir=tmp_path / "run", torch_threads=1, metrics_interval_s=0.2,
        task=TaskSpec(target=CHAT, kwargs={"model": "tiny", "max_tokens": 64, "eval_questions": 2,
                                           "max_new_tokens": 4}),
        batch_size=4, lr=1e-2, saved_weights="trainable", publish_every=10, checkpoint_every=10,
        mixture={FEEDBACK: 1.0, REPLAY: 1.0})
    handle = start(config)
    client = handle.client()
    wait_until(lambda: client.status()["step"] >= 3, timeout=120, what="training on replay", state=client.status)
    fact = {"prompt": "How long is the warranty on the Orbit Q3?", "response": "The Orbit Q3 comes with a 27-month warranty."}
    rows = pa.Table.from_pylist([{**fact, "kind": "correction", "model_version": 1, "time": time.time()}] * 4,
                                schema=feedback_schema())
    ack = client.ingest(rows, FEEDBACK)
    assert ack["rows"] == 4
    wait_until(lambda: ray_get_first_uses(handle) >= 4, timeout=120, what="the corrections trained on")
    wait_until(lambda: len(client.checkpoints()) >= 2 and client.status()["weights_version"] >= 2, timeout=120,
               what="checkpoints and versions", state=client.status)
    client.wait(client.send("pause"))
    checkpoint = client.checkpoints()[-1]
    replica = build_chat_model("tiny")
    whole = sum(v.numel() for v in replica.state_dict().values())
    adapter = {n for n, p in replica.named_parameters() if p.requires_grad}
    size = (handle.config.resolved_run_dir / "checkpoints" / checkpoint["id"] / "model.safetensors").stat().st_size
    assert size < 4.1 * sum(p.numel() for n, p in replica.named_parameters() if n in adapter) + 100_000
    version = client.weight_version()
    assert version is not None and version.partial and version.num_params < whole / 10
    sub = client.subscribe(replica)
    loaded = sub.refresh()
    assert loaded is not None and loaded.version == version.version
    state = client.fetch_weights(version)
    assert set(state) == adapter
    assert all(torch.equal(replica.state_dict()[k], v) for k, v in state.items())


def ray_get_first_uses(handle: Any) -> int:
    import ray

    return len(ray.get(handle.trainer.first_use_latencies.remote()))
