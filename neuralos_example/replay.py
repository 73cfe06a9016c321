"""Replaying logged sessions in the simulator: interaction rows in, true transitions out.

The demo only shows the model's frames; what really happens after a user's actions is found by
replaying them in the simulator (the stand-in for the real desktop), from the session's seed.
:class:`Replayer` tails the run's ``interactions`` log in the buffer and ingests each replayed
transition (true previous frame, action, true next frame, task tag) into the ``live`` source.

Its position (interaction rows replayed) is kept in ``state_path`` after each acknowledged
ingest; a batch is named by the rows it covers, so one sent again after a crash is recognised
by the buffer and not stored twice. On a restart the sessions' simulator states are rebuilt by
replaying the rows before that position without sending them.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from neuralos_example.data import encode_png, transition_schema
from neuralos_example.simulator import Action, Desktop, Event, key_for_index

log = logging.getLogger(__name__)

COLUMNS = ["session", "seed", "step", "time", "x", "y", "event", "key_index", "task"]
#: Steps of one session held waiting for an earlier one (logged by another replica, later).
MAX_HELD = 64


class _Replay:
    __slots__ = ("desktop", "frame", "png", "next_step", "held")

    def __init__(self, seed: int, size: int) -> None:
        self.desktop = Desktop(size, seed)
        self.frame = self.desktop.render()
        self.png: bytes | None = None
        self.next_step = 0
        self.held: dict[int, dict[str, Any]] = {}  # later steps logged before an earlier one


class Replayer:
    """``poll()`` replays new interaction rows and ingests their transitions; ``start()`` polls in a thread.

    Without saved state it begins at interaction row ``from_row`` (0: the whole log).
    """

    def __init__(
        self,
        client: Any,
        state_path: str | Path | None = None,
        size: int = 64,
        source: str = "interactions",
        target: str = "live",
        poll_s: float = 0.2,
        max_rows: int = 2048,
        from_row: int = 0,
    ) -> None:
        self.client, self.size, self.source, self.target = client, size, source, target
        self.poll_s, self.max_rows = poll_s, max_rows
        self.state_path = Path(state_path) if state_path else None
        self.sessions: dict[str, _Replay] = {}
        self.position = 0
        self.transitions = 0
        self.skipped = 0
        self.skip_reasons: collections.deque[str] = collections.deque(maxlen=20)
        # seconds from an interaction (received by the demo) to its transition acknowledged by the buffer
        self.latencies_s: collections.deque[float] = collections.deque(maxlen=10_000)
        self.max_sessions = 4096
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one poll at a time (the thread's and a final one)
        self._pending_stop: int | None = None  # a batch that may have been sent before a crash
        if self.state_path is not None and self.state_path.exists():
            saved = json.loads(self.state_path.read_text())
            self.transitions = saved.get("transitions", 0)
            self._pending_stop = saved.get("pending_stop")
            self._rebuild(saved["position"])
        elif from_row:  # a new replayer over a log whose first rows are not its business
            self._rebuild(from_row)

    def _rebuild(self, position: int) -> None:
        """Sessions' simulator states as of interaction row ``position`` (replayed, not sent)."""
        self.sessions = {}
        if position:
            self._replay(self.client.read_rows(self.source, 0, position, COLUMNS), send=False)
        self.position = position

    def _save(self, **extra: Any) -> None:
        if self.state_path is not None:
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"position": self.position, "transitions": self.transitions, **extra}))
            tmp.replace(self.state_path)

    def _skip(self, why: str) -> None:
        self.skipped += 1
        self.skip_reasons.append(why)

    def _replay(self, rows: pa.Table, send: bool) -> dict[str, list[Any]]:
        """Replay ``rows`` in each session's step order. Replicas log independently, so a
        session's step may come before the one it follows: it is held until the gap is
        filled (up to :data:`MAX_HELD` steps; a gap that never fills ends that session)."""
        out: dict[str, list[Any]] = {k: [] for k in transition_schema().names}
        for r in rows.to_pylist():
            sid, step = r["session"], r["step"]
            rep = self.sessions.get(sid)
            if rep is None:
                try:
                    rep = self.sessions[sid] = _Replay(r["seed"], self.size)  # every row carries the seed
                except (ValueError, TypeError) as e:
                    self._skip(f"session {sid}: bad seed {r['seed']!r}: {e}")
                    continue
                if len(self.sessions) > self.max_sessions:  # forget the oldest started
                    del self.sessions[next(iter(self.sessions))]
            if step > rep.next_step:
                rep.held[step] = r
                if len(rep.held) > MAX_HELD:
                    self._skip(f"session {sid}: step {rep.next_step} never logged; {len(rep.held)} later steps dropped")
                    self.sessions.pop(sid, None)
                continue
            if step < rep.next_step:
                self._skip(f"session {sid}: step {step} logged twice or out of order (expected {rep.next_step})")
                continue
            while r is not None:
                if not self._apply(sid, rep, r, out, send):
                    break
                r = rep.held.pop(rep.next_step, None)
        return out

    def _apply(self, sid: str, rep: _Replay, r: dict[str, Any], out: dict[str, list[Any]], send: bool) -> bool:
        step = r["step"]
        try:
            action = Action(r["x"], r["y"], Event(r["event"]), key_for_index(r["key_index"]))
            nxt = rep.desktop.step(action)
        except (ValueError, TypeError, IndexError) as e:
            self._skip(f"session {sid} step {step}: {e}")
            self.sessions.pop(sid, None)  # its later steps cannot be replayed faithfully
            return False
        rep.next_step += 1
        if send:
            prev_png = rep.png or encode_png(rep.frame)
            rep.png = encode_png(nxt)
            for k, v in (("session", sid), ("step", step), ("task", r["task"]), ("prev", prev_png), ("next", rep.png),
                         ("x", action.x), ("y", action.y), ("event", int(action.event)), ("key_index", action.key_index)):
                out[k].append(v)
        else:
            rep.png = None
        rep.frame = nxt
        return True

    def poll(self) -> int:
        """Replay the interaction rows logged since the last poll; returns transitions ingested.

        The batch's row range is saved before it is sent and reused after a crash, so its
        batch id is the same and the buffer does not store it twice. If the send fails the
        sessions are rebuilt as of the last acknowledged row, and the next poll sends it again.
        """
        with self._lock:
            total = self.client.sources()[self.source]["rows"]
            if total <= self.position:
                return 0
            stop = self._pending_stop or min(total, self.position + self.max_rows)
            rows = self.client.read_rows(self.source, self.position, stop, COLUMNS)
            start = self.position
            try:
                out = self._replay(rows, send=True)
                n = len(out["session"])
                if n:
                    self._save(pending_stop=stop)
                    table = pa.table(out, schema=transition_schema())
                    self.client.ingest(table, self.target, batch_id=f"replay-{start}-{stop}")
            except BaseException:
                self._rebuild(start)
                raise
            if n:
                now = time.time()
                self.latencies_s.extend(now - t for t in rows.column("time").to_pylist())
            self.position = stop
            self._pending_stop = None
            self.transitions += n
            self._save()
            return n

    def start(self) -> Replayer:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="replayer", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.poll():
                    continue  # more may be waiting
            except Exception as e:  # the buffer may be restarting; try again
                log.warning("replayer: %s: %s", type(e).__name__, e)
                self._stop.wait(1.0)
            self._stop.wait(self.poll_s)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def stats(self) -> dict[str, Any]:
        lat = sorted(self.latencies_s)
        pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: None)
        return {"position": self.position, "transitions": self.transitions, "skipped": self.skipped,
                "sessions": len(self.sessions), "latency_p50_s": pick(0.5), "latency_p95_s": pick(0.95)}
