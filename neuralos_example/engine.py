"""The deployed model's engine: user sessions, autoregressive frames, and the interaction log.

:class:`DemoEngine` is the demo without a UI: a session starts on the desktop's first frame and
each action produces the next frame from the model, from the model's own previous frame (as in
NeuralOS: the user sees only generated frames). Every action becomes an interaction row
(:func:`neuralos_example.task.interaction_schema`) handed to an :class:`InteractionLog`, which
sends rows to the run's buffer from a background thread so a user never waits for a disk.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from neuralos_example.data import TASKS, encode_png
from neuralos_example.model import DEFAULT_STEPS, SAMPLER_STEPS, FramePredictor, NextFrameModel
from neuralos_example.simulator import Action, Desktop, Event
from neuralos_example.task import interaction_schema
from ray_interactive import call_with_retry

log = logging.getLogger(__name__)


@dataclass
class DemoSession:
    id: str
    seed: int
    task: str | None
    frame: np.ndarray
    cursor: tuple[int, int]
    step: int = 0
    base_frame: np.ndarray | None = None  # the base model's own frame, while the session compares (see DemoEngine.compare)
    last_seen: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _FrameRequest:
    frame: np.ndarray
    action: Action
    steps: int
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[np.ndarray, int] | None = None
    error: BaseException | None = None


def parse_event(event: str | int) -> Event:
    """``"left_click"``, ``"LEFT_CLICK"``, ``"left click"`` or 1 -> Event.LEFT_CLICK (ValueError otherwise)."""
    if isinstance(event, (int, np.integer)) and not isinstance(event, bool):
        try:
            return Event(int(event))
        except ValueError:
            pass
    elif isinstance(event, str):
        name = event.strip().upper().replace(" ", "_")
        if name in Event.__members__:
            return Event[name]
    raise ValueError(f"unknown event {event!r}; events: {', '.join(e.name.lower() for e in Event)}")


class _Unsent(Exception):
    """The interaction log's send failed; its rows are kept."""


class InteractionLog:
    """Buffers interaction rows and sends them with ``send(table, batch_id)`` from a thread.

    A failed send keeps its rows (and batch id, so a retry after an unknown outcome is not
    stored twice) and is retried: the thread is a queue that never drops rows a send failed
    on, so it keeps going (a pause of 1 s after a failure) rather than giving up like a
    bounded retry. :meth:`close` flushes what is left, retrying until its timeout.
    """

    def __init__(self, send: Callable[[pa.Table, str], Any], flush_s: float = 0.1, max_rows: int = 256) -> None:
        self._send = send
        self.flush_s = flush_s
        self.max_rows = max_rows  # per send: a backlog after an outage goes in pieces the buffer accepts
        self.rejected_rows = 0
        self._flush_lock = threading.Lock()
        self._closed = False
        self._rows: list[dict[str, Any]] = []
        self._retry: tuple[pa.Table, str] | None = None
        self._cv = threading.Condition()
        self._stop = False
        self.sent_rows = 0
        self.failures = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._loop, name="interaction-log", daemon=True)
        self._thread.start()

    def add(self, row: dict[str, Any]) -> None:
        with self._cv:
            self._rows.append(row)
            self._cv.notify()

    @property
    def pending(self) -> int:
        with self._cv:
            return len(self._rows) + (self._retry[0].num_rows if self._retry else 0)

    def _take(self) -> tuple[pa.Table, str] | None:
        with self._cv:
            if self._retry is not None:
                return self._retry
            if not self._rows:
                return None
            rows, self._rows = self._rows[: self.max_rows], self._rows[self.max_rows :]
        try:
            table = pa.Table.from_pylist(rows, schema=interaction_schema())
        except (pa.ArrowException, OverflowError, TypeError, ValueError) as e:
            self._reject(len(rows), e)
            return None
        return table, f"interactions-{uuid.uuid4().hex}"

    def _reject(self, n: int, e: BaseException) -> None:
        self.rejected_rows += n
        self.last_error = f"{type(e).__name__}: {e}"
        log.error("interaction log: %d rows refused, dropped: %s", n, self.last_error)

    def flush(self) -> bool:
        """Send one batch of what is buffered; False if the send failed (the rows are kept)."""
        with self._flush_lock:
            item = self._take()
            if item is None:
                return True
            try:
                self._send(*item)
            except ValueError as e:  # refused by the buffer (schema, size): retrying cannot help
                self._reject(item[0].num_rows, e)
            except Exception as e:  # the run may be restarting; keep the rows and retry
                with self._cv:
                    self._retry = item
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("interaction log: send failed (%s); will retry", self.last_error)
                return False
            else:
                self.sent_rows += item[0].num_rows
            with self._cv:
                self._retry = None
            return True

    def _loop(self) -> None:
        while True:
            with self._cv:
                if not self._stop and not self._rows and self._retry is None:
                    self._cv.wait()
                if self._stop:
                    return
            time.sleep(self.flush_s)  # gather the rows of concurrent users into one ingest
            try:
                ok = self.flush()
            except Exception as e:  # never let the thread die: rows would pile up unsent
                log.error("interaction log: %s: %s", type(e).__name__, e)
                ok = False
            if not ok:
                time.sleep(1.0)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread and send what is left (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout)
        deadline = time.monotonic() + timeout

        def drain() -> None:  # a failed send keeps its rows (and batch id) for the retry
            while self.pending and time.monotonic() < deadline:
                if not self.flush():
                    raise _Unsent(self.last_error or "send failed")

        try:
            call_with_retry(drain, "interaction log: final flush", deadline_s=max(0.0, deadline - time.monotonic()),
                            on=_Unsent, base_delay=0.25, max_delay=1.0, logger=log, level=logging.INFO)
        except _Unsent:
            pass  # the rows stay pending, said below
        if self.pending:
            log.error("interaction log: %d rows not sent at close: %s", self.pending, self.last_error)


class DemoEngine:
    """Sessions of users on the model. ``model_lock`` is held for inference (the weight
    subscriber swaps weights under the same lock); ``version`` is the served weights version.

    ``base_model`` (optional, never updated): a session that turns :meth:`compare` on also gets
    the base model's frame for each action, drawn from the base's own previous frame, so a person
    sees side by side what the deployment learned. It costs a second sampling per action, only
    for sessions that compare."""

    def __init__(
        self,
        model: NextFrameModel,
        log_rows: Callable[[dict[str, Any]], None] | None = None,
        steps: int = DEFAULT_STEPS,
        model_lock: Any = None,
        max_sessions: int = 512,
        seed: int = 0,
        max_batch: int = 8,
        base_model: NextFrameModel | None = None,
        remote: Any = None,
    ) -> None:
        self.model = model.eval()
        # Frames drawn elsewhere (the Serve deployment: neuralos_example.serving.ServedFrames),
        # which also logs the interactions; ``model`` then only gives the screen's size.
        self.remote = remote
        self.base_predictor = FramePredictor(base_model.eval(), self._check_steps(steps), seed) if base_model is not None else None
        self._base_lock = threading.Lock()
        self.predictor = FramePredictor(model, self._check_steps(steps), seed)
        self.log_rows = log_rows
        self.model_lock = model_lock if model_lock is not None else threading.RLock()
        self.max_sessions = max_sessions
        self.version_source: Callable[[], int] | None = None  # read under model_lock, see version
        self._version = 0
        self.sessions: dict[str, DemoSession] = {}
        # ids of sessions forgotten to make room, so their users are told why, not "unknown"
        self.evicted: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.evictions = 0
        self._lock = threading.Lock()
        self._seeds = np.random.default_rng(seed)
        self.size = model.config.size
        self.first_frame = Desktop(self.size, 0).render()
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=10_000)
        # Frames of concurrent sessions are sampled together: on one CPU thread a batch of 4
        # costs ~2x one frame (more on a GPU). Requests that arrive while a batch runs form the
        # next one; a lone request waits for nothing.
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self._requests: queue.SimpleQueue[_FrameRequest | None] = queue.SimpleQueue()
        self.requested = 0  # frames handed to the worker so far
        self._worker: threading.Thread | None = None
        self._closed = False

    @property
    def version(self) -> int:
        """The weights version being served (0: the base model)."""
        if self.remote is not None:
            return int(self.remote.version)
        return self.version_source() if self.version_source is not None else self._version

    @version.setter
    def version(self, v: int) -> None:
        self._version = v

    @staticmethod
    def _check_steps(steps: int) -> int:
        if int(steps) not in SAMPLER_STEPS:
            raise ValueError(f"sampler steps must be one of {SAMPLER_STEPS}, got {steps!r}")
        return int(steps)

    def _predict(self, frame: np.ndarray, action: Action, steps: int) -> tuple[np.ndarray, int]:
        """The next frame and the weights version that drew it (read under the swap's lock)."""
        owned = getattr(self.model_lock, "_is_owned", lambda: False)()  # an RLock this thread holds
        if self.max_batch == 1 or owned:  # (the worker could not take it: draw here)
            with self.model_lock, torch.inference_mode():
                return self.predictor.predict(frame, action, steps), self.version
        req = _FrameRequest(frame, action, steps)
        with self._lock:  # enqueued under the lock close() takes: never behind its stop marker
            if self._closed:
                raise RuntimeError("the demo engine is closed")
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name="demo-frames", daemon=True)
                self._worker.start()
            worker = self._worker
            self._requests.put(req)
            self.requested += 1
        while not req.done.wait(1.0):
            if not worker.is_alive() and not req.done.is_set():
                raise RuntimeError("the demo's frame worker stopped")
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _serve(self) -> None:
        while (first := self._requests.get()) is not None:
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._requests.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._requests.put(None)  # close() after this batch
                    break
                batch.append(nxt)
            self.batch_sizes[len(batch)] += 1
            for steps in dict.fromkeys(r.steps for r in batch):  # one sampling per DDIM setting
                group = [r for r in batch if r.steps == steps]
                try:
                    with self.model_lock, torch.inference_mode():
                        frames = self.predictor.predict_many([r.frame for r in group], [r.action for r in group], steps)
                        version = self.version
                    for r, f in zip(group, frames, strict=True):
                        r.result = (f, version)
                except BaseException as e:  # noqa: BLE001 - handed to the sessions that asked
                    for r in group:
                        r.error = e
                finally:
                    for r in group:
                        r.done.set()

    def close(self) -> None:
        """Stop the frame worker after the requests already queued; later ones are refused."""
        with self._lock:
            self._closed = True
            worker, self._worker = self._worker, None
            if worker is not None:
                self._requests.put(None)
        if worker is not None:
            worker.join(30)

    def new_session(self, task: str | None = None, seed: int | None = None) -> DemoSession:
        task = task or None
        if task is not None and task not in TASKS:
            raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)} (or none)")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31):
            raise ValueError(f"seed must be an int in [0, 2**31), got {seed!r}")
        with self._lock:
            if len(self.sessions) >= self.max_sessions:  # forget the longest idle one
                oldest = min(self.sessions.values(), key=lambda s: s.last_seen)
                del self.sessions[oldest.id]
                self.evictions += 1
                self.evicted[oldest.id] = None
                if len(self.evicted) > 16 * self.max_sessions:
                    self.evicted.popitem(last=False)
                log.info("session %s evicted after %d steps (the demo keeps %d)", oldest.id, oldest.step, self.max_sessions)
            s = DemoSession(
                id=uuid.uuid4().hex[:16],
                seed=int(self._seeds.integers(2**31)) if seed is None else int(seed),
                task=task,
                frame=self.first_frame,
                cursor=(self.size // 2, self.size // 2),
            )
            self.sessions[s.id] = s
        return s

    def session(self, session_id: str) -> DemoSession:
        s = self.sessions.get(session_id)
        if s is None:
            if session_id in self.evicted:
                raise ValueError(f"session {session_id!r} expired: the demo keeps the {self.max_sessions} most recently used "
                                 "sessions; start a new one with new_session")
            raise ValueError(f"unknown session {session_id!r}: start one with new_session")
        return s

    def compare(self, session_id: str, on: bool) -> np.ndarray | None:
        """Turn the side-by-side base frame on (from the frame on screen now) or off; returns it."""
        if on and self.base_predictor is None:
            raise ValueError("this demo has no base model to compare with")
        s = self.session(session_id)
        with s.lock:
            s.base_frame = s.frame.copy() if on else None
            return s.base_frame

    def act(
        self,
        session_id: str,
        x: int | None,
        y: int | None,
        event: str | int,
        key: str | None = None,
        steps: int | None = None,
        task: str | None = None,
    ) -> dict[str, Any]:
        """Apply one action; returns the new frame and what was logged about it."""
        s = self.session(session_id)
        ev = parse_event(event)
        n_steps = self.predictor.steps if steps is None else self._check_steps(steps)
        if task:
            if task not in TASKS:
                raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
            s.task = task
        with s.lock:
            cx, cy = s.cursor
            action = Action(cx if x is None else x, cy if y is None else y, ev, key or None)
            action.check_bounds(self.size)
            received = time.time()
            t0 = time.perf_counter()
            if self.remote is not None:
                meta = {"session": s.id, "seed": s.seed, "step": s.step, "time": received, "task": s.task}
                frame, version = self.remote.predict(s.frame, action, n_steps, meta)
            else:
                frame, version = self._predict(s.frame, action, n_steps)
            latency = (time.perf_counter() - t0) * 1000
            if s.base_frame is not None and self.base_predictor is not None:
                with self._base_lock, torch.inference_mode():
                    s.base_frame = self.base_predictor.predict(s.base_frame, action, n_steps)
            base_frame = s.base_frame
            step = s.step
            s.frame, s.cursor, s.step, s.last_seen = frame, (action.x, action.y), step + 1, time.time()
            if self.log_rows is not None and self.remote is None:
                self.log_rows(
                    {
                        "session": s.id,
                        "seed": s.seed,
                        "step": step,
                        "time": received,
                        "x": action.x,
                        "y": action.y,
                        "event": int(action.event),
                        "key_index": action.key_index,
                        "task": s.task,
                        "frame": encode_png(frame),
                        "model_version": version,
                        "latency_ms": latency,
                        "sampler_steps": n_steps,
                    }
                )
        self.latencies_ms.append(latency)
        return {"session": s.id, "step": step + 1, "frame": frame, "version": version, "latency_ms": latency, "steps": n_steps,
                "base_frame": base_frame}
