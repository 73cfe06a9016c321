"""A run's actors over their life: telling a restart from an error, releasing a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import ray
import ray.exceptions

from ray_interactive.core.config import actor_name, shard_actor_name


def buffer_shards(run: str, namespace: str, primary: Any = None) -> list[Any]:
    """Handles of a run's buffer shards, the primary first (one with ``buffer_shards`` 1)."""
    if primary is None:
        primary = ray.get_actor(actor_name(run, "buffer"), namespace=namespace)
    count = ray.get(primary.shard_count.remote(), timeout=60)
    return [primary] + [ray.get_actor(shard_actor_name(run, k), namespace=namespace) for k in range(1, count)]


def actor_restarting(e: BaseException) -> bool:
    """``on=`` for calls to a Ray actor that Ray restarts: the actor is unavailable or died
    (``ActorUnavailableError``, ``ActorDiedError``). A call that raised inside the actor
    (``RayTaskError``, even one whose cause is an actor error) is not a restart."""
    return isinstance(e, ray.exceptions.RayActorError) and not isinstance(e, ray.exceptions.RayTaskError)


def run_is_gone(e: BaseException) -> bool:
    """Whether a failed call means the run's actor is gone (not a passing hiccup)."""
    return isinstance(e, ray.exceptions.RayActorError)


def death_reason(e: BaseException) -> str:
    first = str(e).strip().splitlines()
    return f"{type(e).__name__}: {first[0][:300]}" if first else type(e).__name__


def paused_at(checkpoint: str) -> bool:
    """Whether the run was paused when the checkpoint was written."""
    return bool(json.loads((Path(checkpoint) / "state.json").read_text())["state"].get("paused"))


def release_run(name: str, namespace: str, keep_controller: bool = False) -> None:
    """Kill whatever actors of run ``name`` are left (trainer, buffer, ingest server and,
    unless ``keep_controller``, its controller); data on disk is untouched."""
    roles = ("trainer", "buffer", "ingest") + (() if keep_controller else ("controller",))
    for role in roles:
        try:
            ray.kill(ray.get_actor(actor_name(name, role), namespace=namespace))  # type: ignore[arg-type]
        except ValueError:
            pass  # not there
    for k in range(1, 65):  # the buffer's other shards (config.buffer_shards, at most 64)
        try:
            ray.kill(ray.get_actor(shard_actor_name(name, k), namespace=namespace))  # type: ignore[arg-type]
        except ValueError:
            break
