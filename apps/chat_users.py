"""Simulated users of the chat: people asking about the product, correcting wrong answers.

Each user asks about a fact of the knowledge base in one of its ``asked`` wordings (never
a held-out one), through the chat's own API (``/ask``) over HTTP with ``gradio_client``,
as a person's browser would. A wrong answer is corrected with the fact's answer
(``/correct``); a right one is sometimes approved (``/approve``). They keep, per fact, how
many corrections it took before the first right answer - the figure the study reports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any

import numpy as np
from gradio_client import Client

import ray_interactive as ri

log = logging.getLogger(__name__)


class Ledger:
    """Corrections sent per fact, by every user, and how many came before its first right answer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.corrections: dict[str, int] = defaultdict(int)
        self.before_right: dict[str, int] = {}
        self.first_corrected_at: dict[str, float] = {}  # fact -> its first correction
        self.first_right_at: dict[str, float] = {}  # fact -> its first right answer

    def corrected(self, fact: str) -> None:
        with self._lock:
            self.corrections[fact] += 1
            self.first_corrected_at.setdefault(fact, time.time())

    def right(self, fact: str) -> None:
        with self._lock:
            if fact not in self.before_right:
                self.before_right[fact] = self.corrections[fact]
                self.first_right_at[fact] = time.time()


class SimulatedChatUser:
    """One user in a thread: questions, corrections and approvals until stopped."""

    def __init__(self, url: str, seed: int = 0, think_s: tuple[float, float] = (0.5, 2.0), approve_p: float = 0.3,
                 stop: threading.Event | None = None, auth: tuple[str, str] | None = None,
                 kb: Any = None, ledger: Ledger | None = None) -> None:
        self.url, self.think_s, self.approve_p, self.auth = url, think_s, approve_p, auth
        self.kb = kb if kb is not None else ri.chat.KnowledgeBase.load()
        self.rng = np.random.default_rng(seed)
        self.stop_event = stop or threading.Event()
        self.asked = self.right = self.corrected = self.approved = self.errors = 0
        self.last_version = 0
        self.ledger = ledger if ledger is not None else Ledger()
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.url, auth=self.auth, verbose=False)
        return self._client

    def turn(self) -> None:
        """One question, and the feedback a person who knows the answer would give."""
        fact = self.kb.facts[int(self.rng.integers(len(self.kb.facts)))]
        question = str(self.rng.choice(fact.asked))
        ex = self.client.predict(question, api_name="/ask")
        self.asked += 1
        self.last_version = int(ex["version"])
        if ri.chat.is_right(ex["answer"], fact.key):
            self.right += 1
            self.ledger.right(fact.id)
            if self.rng.random() < self.approve_p:
                self.client.predict(ex["id"], api_name="/approve")
                self.approved += 1
        else:
            self.client.predict(ex["id"], fact.answer, api_name="/correct")
            self.corrected += 1
            self.ledger.corrected(fact.id)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.turn()
            except Exception as e:  # the app may be busy or restarting: wait and go on
                self.errors += 1
                log.warning("simulated chat user: %s: %s", type(e).__name__, e)
                self.stop_event.wait(1.0)
            self.stop_event.wait(float(self.rng.uniform(*self.think_s)))


class ChatUserPool:
    """``n`` simulated users in threads."""

    def __init__(self, url: str, n: int = 2, seed: int = 0, **kwargs: Any) -> None:
        self.stop_event = threading.Event()
        self.ledger = Ledger()
        self.users = [SimulatedChatUser(url, seed + i, stop=self.stop_event, ledger=self.ledger, **kwargs)
                      for i in range(n)]
        self.threads = [threading.Thread(target=u.run, name=f"chat-user-{i}", daemon=True)
                        for i, u in enumerate(self.users)]

    def start(self) -> ChatUserPool:
        for t in self.threads:
            t.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def stats(self) -> dict[str, Any]:
        firsts = dict(self.ledger.before_right)
        led = self.ledger
        learnt_s = {f: round(led.first_right_at[f] - led.first_corrected_at[f], 1)
                    for f in led.first_right_at if f in led.first_corrected_at}
        return {"users": len(self.users), "asked": sum(u.asked for u in self.users),
                "right": sum(u.right for u in self.users), "corrected": sum(u.corrected for u in self.users),
                "approved": sum(u.approved for u in self.users), "errors": sum(u.errors for u in self.users),
                "facts_answered_right": len(firsts), "corrections_before_right": firsts,
                "first_correction_to_right_s": learnt_s}
