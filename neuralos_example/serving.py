"""The NeuralOS model as a Ray Serve deployment: N replicas, each following the run's
published weights and logging its users' interactions.

The demo's sessions (each user's screen) stay in the Gradio process in front
(:class:`~neuralos_example.engine.DemoEngine` with a :class:`ServedFrames`): a request
carries the frame on screen and the action, so any replica can answer it and a replica
that dies loses no session. Frames of concurrent requests to a replica are sampled together
(``@serve.batch``); the replica logs each interaction with the version that drew it.

    serve run neuralos_example/serve_config.yaml      # or: python -m neuralos_example.main --replicas 2
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from ray import serve

import ray_interactive as ri
from neuralos_example.data import encode_png
from neuralos_example.model import BASE_CHECKPOINT, DEFAULT_STEPS, FramePredictor, load_model
from neuralos_example.simulator import Action
from neuralos_example.task import interaction_schema

log = logging.getLogger(__name__)

#: the buffer source the replicas log to (the task's live source)
SOURCE = "interactions"


@dataclass
class FrameRequest:
    """One user's action on the frame on their screen; ``meta`` (session, seed, step, time,
    task) makes the interaction row the replica logs (None: not logged)."""

    frame: np.ndarray
    action: Action
    steps: int
    meta: dict[str, Any] | None = None


@dataclass
class FrameReply:
    frame: np.ndarray
    version: int
    replica: str
    latency_ms: float
    batch: int


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=32)
class NeuralOSModel:
    """A replica: the model, its weights kept on the run's published versions, its log."""

    def __init__(self, run: str, checkpoint: str = str(BASE_CHECKPOINT), sampler_steps: int = DEFAULT_STEPS,
                 namespace: str = "ray_interactive", torch_threads: int = 1, seed: int = 0) -> None:
        torch.set_num_threads(torch_threads)
        self.model = load_model(checkpoint).eval()
        self.predictor = FramePredictor(self.model, sampler_steps, seed)
        self.link = ri.ReplicaLink(run, self.model, namespace=namespace, max_delay_s=0.05)

    async def next_frame(self, req: FrameRequest) -> FrameReply:
        return await self._frames(req)

    # 20 ms, not Serve's 10 or less: while a batch samples, the replica's event loop hardly
    # gets the GIL, so the requests that queued arrive one by one after it; with 2 ms the
    # next batch held ~1.3 frames (22 frames/s at 8 users), with 20 ms it holds 8 (41/s)
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _frames(self, reqs: list[FrameRequest]) -> list[FrameReply]:
        # the sampling runs in a thread: the replica's event loop gathers the next batch meanwhile
        return await asyncio.to_thread(self._draw, reqs)

    def _draw(self, reqs: list[FrameRequest]) -> list[FrameReply]:
        replies: list[FrameReply | None] = [None] * len(reqs)
        rows = []
        for steps in dict.fromkeys(r.steps for r in reqs):  # one sampling per DDIM setting
            idx = [i for i, r in enumerate(reqs) if r.steps == steps]
            t0 = time.perf_counter()
            with self.link.lock, torch.inference_mode():
                frames = self.predictor.predict_many([reqs[i].frame for i in idx], [reqs[i].action for i in idx], steps)
                version = self.link.version
            latency = (time.perf_counter() - t0) * 1000
            for i, f in zip(idx, frames, strict=True):
                replies[i] = FrameReply(f, version, self.link.name, latency, len(reqs))
                meta = reqs[i].meta
                if meta is not None:
                    a = reqs[i].action
                    rows.append({**meta, "x": a.x, "y": a.y, "event": int(a.event), "key_index": a.key_index,
                                 "frame": encode_png(f), "model_version": version, "latency_ms": latency,
                                 "sampler_steps": steps})
        if rows:
            future = self.link.log(pa.Table.from_pylist(rows, schema=interaction_schema()), SOURCE)
            future.add_done_callback(_log_failure)
        self.link.answered(len(reqs))
        return replies  # type: ignore[return-value]

    async def info(self) -> dict[str, Any]:
        return self.link.stats()

    def __del__(self) -> None:  # Serve calls it when the replica stops: send the last rows
        link = getattr(self, "link", None)
        if link is not None:
            link.close(timeout=20)


def _log_failure(future: Any) -> None:
    if future.exception() is not None:
        log.error("interaction rows not stored: %s", future.exception())


class ServedFrames:
    """The Gradio side's view of the deployment: ``predict`` sends a request to a replica
    and waits for its frame; :attr:`replicas` is what the replicas report to the run
    (refreshed at most every ``refresh_s``), :attr:`version` the newest one served."""

    def __init__(self, handle: Any, client: Any, timeout_s: float = 60.0, refresh_s: float = 1.0) -> None:
        self.handle = handle
        self.client = client
        self.timeout_s = timeout_s
        self.refresh_s = refresh_s
        self._seen = 0  # the newest version a reply carried
        self._reports: list[dict[str, Any]] = []
        self._read_at = 0.0

    def predict(self, frame: np.ndarray, action: Action, steps: int, meta: dict[str, Any] | None) -> tuple[np.ndarray, int]:
        reply: FrameReply = self.handle.next_frame.remote(FrameRequest(frame, action, steps, meta)).result(
            timeout_s=self.timeout_s)
        self._seen = max(self._seen, reply.version)
        return reply.frame, reply.version

    @property
    def replicas(self) -> dict[str, int]:
        """Alive replica -> the version it serves."""
        if time.monotonic() - self._read_at >= self.refresh_s:
            try:
                self._reports = self.client.replicas()
                self._read_at = time.monotonic()
            except Exception as e:  # the controller restarting: keep the last view
                log.warning("replica reports: %s", e)
        return {r["name"]: r["version"] for r in self._reports if r["alive"]}

    @property
    def version(self) -> int:
        return max([self._seen, *self.replicas.values()])


def app(args: dict[str, Any]) -> Any:
    """The application for ``serve run`` / ``serve deploy`` (see ``serve_config.yaml``):
    ``args``: ``run`` (required), ``checkpoint``, ``sampler_steps``, ``namespace``."""
    if "run" not in args:
        raise ValueError("the NeuralOS Serve application needs args.run: the name of the run whose weights it serves")
    return NeuralOSModel.bind(**args)
