"""Simulated users: scripted people doing the frequent tasks through the demo's own API.

Each user starts a session (``/new_session``), plans a task with the scripted users of the
simulator (human-like noise: wobbly mouse paths, missed clicks that are retried, resting hands),
and sends every action to ``/act`` with a short think time, as a person at the demo would. They
go through ``gradio_client`` over HTTP, so the loop runs without a person and exercises exactly
the path a person's browser does.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
from gradio_client import Client

from neuralos_example.data import FREQUENT_TASKS, task_actions
from neuralos_example.simulator import Desktop

log = logging.getLogger(__name__)


class SimulatedUser:
    """One user in a thread: sessions of frequent tasks until stopped."""

    def __init__(
        self,
        url: str,
        seed: int = 0,
        tasks: tuple[str, ...] = FREQUENT_TASKS,
        think_s: tuple[float, float] = (0.05, 0.3),
        tasks_per_session: tuple[int, int] = (1, 3),
        stop: threading.Event | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        self.url, self.tasks, self.think_s, self.tasks_per_session = url, tasks, think_s, tasks_per_session
        self.auth = auth
        self.rng = np.random.default_rng(seed)
        self.stop_event = stop or threading.Event()
        self.actions = 0
        self.sessions = 0
        self.errors = 0
        self.last_version = 0
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.url, auth=self.auth, verbose=False)
        return self._client

    def session(self, size: int = 64) -> None:
        """One session: a few tasks in a row on one desktop."""
        c = self.client
        n_tasks = int(self.rng.integers(self.tasks_per_session[0], self.tasks_per_session[1] + 1))
        first = str(self.rng.choice(self.tasks))
        info = c.predict(first, None, api_name="/new_session")
        sid, seed = info["session"], int(info["seed"])
        desk = Desktop(size, seed)  # what the user's actions really do (their plan follows it)
        self.sessions += 1
        for i in range(n_tasks):
            task = first if i == 0 else str(self.rng.choice(self.tasks))
            for a in task_actions(task, self.rng, desk):
                if self.stop_event.is_set():
                    return
                res = c.predict(sid, a.x, a.y, a.event.name.lower(), a.key or "", 0, task, api_name="/act")
                desk.apply(a)
                self.actions += 1
                self.last_version = int(res["version"])
                self.stop_event.wait(float(self.rng.uniform(*self.think_s)))

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.session()
            except Exception as e:  # the demo may be busy or restarting: wait and go on
                self.errors += 1
                log.warning("simulated user: %s: %s", type(e).__name__, e)
                self.stop_event.wait(1.0)


class UserPool:
    """``n`` simulated users in threads."""

    def __init__(self, url: str, n: int = 2, seed: int = 0, **kwargs: Any) -> None:
        self.stop_event = threading.Event()
        self.users = [SimulatedUser(url, seed + i, stop=self.stop_event, **kwargs) for i in range(n)]
        self.threads = [threading.Thread(target=u.run, name=f"sim-user-{i}", daemon=True) for i, u in enumerate(self.users)]

    def start(self) -> UserPool:
        for t in self.threads:
            t.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def stats(self) -> dict[str, int]:
        return {"users": len(self.users), "sessions": sum(u.sessions for u in self.users),
                "actions": sum(u.actions for u in self.users), "errors": sum(u.errors for u in self.users)}
