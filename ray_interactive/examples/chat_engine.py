"""The deployed chat's logic without a UI: answer, remember, log, take feedback.

:class:`ChatEngine` answers a question with the model it holds (under the lock a weight
swap takes, so an answer is drawn by one version, which it names), keeps the recent
exchanges, and logs each one - answered, then judged - to the run's ``exchanges`` source;
a correction (or an approved answer) also goes to the ``feedback`` source the trainer
learns from. ``send(table, source)`` is the run's ingest (a replica's
:meth:`~ray_interactive.runtime.serving.ReplicaLink.log`: exactly once, in the background);
None logs nothing (the base model on its own). The Gradio app (``apps/chat_demo.py``) and
the simulated users drive it.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
from torch import nn

from ray_interactive.examples.chat_corrections import (
    EXCHANGES,
    FEEDBACK,
    answer,
    exchange_schema,
    feedback_schema,
)

log = logging.getLogger(__name__)

MAX_TEXT = 2000  # characters of a question or a correction


@dataclass
class Exchange:
    id: str
    prompt: str
    answer: str
    version: int  # the weights version that drew the answer (0: the base)
    latency_ms: float
    time: float
    feedback: str = "none"  # "none", "wrong" (corrected) or "approved"
    correction: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty text")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{what} is {len(value)} characters; at most {MAX_TEXT}")
    return value.strip()


class ChatEngine:
    """Answers with ``model``; ``version()`` names the weights loaded (read under ``lock``)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        lock: Any = None,
        version: Callable[[], int] = lambda: 0,
        send: Callable[[pa.Table, str], Any] | None = None,
        max_new_tokens: int = 48,
        keep: int = 10_000,
    ) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.lock = lock if lock is not None else threading.RLock()
        self.version = version
        self.send = send
        self.max_new_tokens = max_new_tokens
        self._exchanges: collections.OrderedDict[str, Exchange] = collections.OrderedDict()
        self._keep = keep
        self._mine = threading.Lock()  # the exchanges and counts (answers are drawn outside it)
        self.counts = {"answered": 0, "corrected": 0, "approved": 0, "logged_rows": 0, "log_failures": 0}

    def ask(self, question: str) -> Exchange:
        """Answer ``question`` (greedy); the exchange is logged and kept for feedback."""
        question = _text(question, "a question")
        t0 = time.perf_counter()
        with self.lock:  # a weight swap waits for the answer: one version draws it
            version = self.version()
            reply = answer(self.model, self.tokenizer, [question], self.max_new_tokens)[0]
        ex = Exchange(uuid.uuid4().hex[:16], question, reply, version, (time.perf_counter() - t0) * 1000, time.time())
        with self._mine:
            self._exchanges[ex.id] = ex
            while len(self._exchanges) > self._keep:
                self._exchanges.popitem(last=False)
            self.counts["answered"] += 1
        self._log_exchange(ex)
        return ex

    def exchange(self, exchange_id: str) -> Exchange:
        with self._mine:
            ex = self._exchanges.get(exchange_id) if isinstance(exchange_id, str) else None
        if ex is None:
            raise ValueError(f"no exchange {str(exchange_id)[:40]!r} (unknown, or too old to judge)")
        return ex

    def correct(self, exchange_id: str, correction: str) -> Exchange:
        """The answer was wrong; ``correction`` is the right one: logged, and taught."""
        correction = _text(correction, "a correction")
        ex = self.exchange(exchange_id)
        with self._mine:
            ex.feedback, ex.correction = "wrong", correction
            self.counts["corrected"] += 1
        self._log_exchange(ex)
        self._log_feedback(ex.prompt, correction, "correction", ex.version)
        return ex

    def approve(self, exchange_id: str) -> Exchange:
        """The answer was right: logged, and taught as it is."""
        ex = self.exchange(exchange_id)
        with self._mine:
            ex.feedback = "approved"
            self.counts["approved"] += 1
        self._log_exchange(ex)
        self._log_feedback(ex.prompt, ex.answer, "approved", ex.version)
        return ex

    # -- logging -----------------------------------------------------------------------
    def _log_exchange(self, ex: Exchange) -> None:
        row = {"exchange_id": ex.id, "prompt": ex.prompt, "answer": ex.answer, "feedback": ex.feedback,
               "correction": ex.correction, "model_version": ex.version, "latency_ms": ex.latency_ms,
               "time": time.time()}
        self._send(pa.Table.from_pylist([row], schema=exchange_schema()), EXCHANGES)

    def _log_feedback(self, prompt: str, response: str, kind: str, version: int) -> None:
        row = {"prompt": prompt, "response": response, "kind": kind, "model_version": version, "time": time.time()}
        self._send(pa.Table.from_pylist([row], schema=feedback_schema()), FEEDBACK)

    def _send(self, table: pa.Table, source: str) -> None:
        if self.send is None:
            return
        future = self.send(table, source)
        if future is not None and hasattr(future, "add_done_callback"):
            future.add_done_callback(lambda f: self._sent(f, table.num_rows, source))

    def _sent(self, future: Any, rows: int, source: str) -> None:
        with self._mine:
            if future.exception() is None:
                self.counts["logged_rows"] += rows
                return
            self.counts["log_failures"] += 1
        log.error("%d row(s) for %s not stored: %s", rows, source, future.exception())

    def info(self) -> dict[str, Any]:
        with self._mine:
            return {"version": self.version(), **self.counts}
