"""The one retry policy of the project: bounded, exponential backoff with jitter, logged.

A thin layer over `tenacity <https://tenacity.readthedocs.io>`_ (pure Python, no Ray or
torch, so the light :mod:`ray_interactive.serve.ingest_client` can use it too)::

    from ray_interactive.core.retry import call_with_retry, retrying

    ack = call_with_retry(send, "ingest", deadline_s=20, on=ConnectionError)

    for attempt in retrying("ingest", attempts=4, on=ConnectionError):
        with attempt:
            ack = send()

Every retry is bounded (``attempts``, ``deadline_s`` or both: whichever ends first) and
logged; when the retries are spent the last error is raised again as it was, so callers
map it to their own message. Only errors matched by ``on`` are retried: anything else is
raised at once. Waits grow ``base_delay * 2**n`` up to ``max_delay``, each stretched by a
random factor in ``[1, 1 + jitter]`` (never shorter, so a client backs off at least as long
as the policy says, and clients that failed together do not retry in lockstep), and never
past the deadline: the last attempt is made at it.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import tenacity

__all__ = ["Backoff", "call_with_retry", "retrying"]

log = logging.getLogger(__name__)

T = TypeVar("T")
#: What ``on`` accepts: exception types, or a predicate on the exception.
RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


class Backoff(tenacity.wait.wait_base):
    """``min(base * 2**(n-1), cap) * (1 + jitter * U[0, 1))`` before retry ``n``, cut to
    the time left before ``deadline_s`` (if any)."""

    def __init__(self, base: float, cap: float, jitter: float, deadline_s: float | None = None) -> None:
        self.base, self.cap, self.jitter, self.deadline_s = base, cap, jitter, deadline_s

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        n = retry_state.attempt_number  # the attempts made so far (>= 1)
        delay = min(self.base * 2 ** min(n - 1, 62), self.cap)
        if self.jitter:
            delay *= 1.0 + self.jitter * random.random()
        if self.deadline_s is not None:
            delay = min(delay, max(0.0, self.deadline_s - (retry_state.seconds_since_start or 0.0)))
        return delay


def _retry_predicate(on: RetryOn) -> Callable[[BaseException], bool]:
    if isinstance(on, type) or isinstance(on, tuple):
        types = on if isinstance(on, tuple) else (on,)
        if not types or not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
            raise TypeError(f"on= must be exception types or a predicate, not {on!r}")
        return lambda e: isinstance(e, types)
    if callable(on):
        return on
    raise TypeError(f"on= must be exception types or a predicate, not {on!r}")


def retrying(
    what: str,
    *,
    attempts: int | None = None,
    deadline_s: float | None = None,
    on: RetryOn = Exception,
    base_delay: float = 0.1,
    max_delay: float = 1.0,
    jitter: float = 0.25,
    logger: logging.Logger | None = None,
    level: int = logging.WARNING,
    sleep: Callable[[float], Any] = time.sleep,
) -> tenacity.Retrying:
    """A :class:`tenacity.Retrying` with the project's policy; iterate it or call it with a function.

    ``what`` names the operation in the log lines. ``attempts`` counts the first try;
    ``deadline_s`` is measured from the first try (no retry starts after it). At least one
    of them must be given: a retry here never goes on for ever. ``sleep`` is for tests.
    """
    if attempts is None and deadline_s is None:
        raise ValueError("retrying() needs attempts=, deadline_s= or both: an unbounded retry is not allowed")
    if attempts is not None and attempts < 1:
        raise ValueError(f"attempts must be >= 1, not {attempts}")
    if deadline_s is not None and not deadline_s >= 0:
        raise ValueError(f"deadline_s must be >= 0, not {deadline_s}")
    if not (base_delay >= 0 and max_delay >= 0 and jitter >= 0):
        raise ValueError(f"base_delay, max_delay and jitter must be >= 0, not {base_delay}, {max_delay}, {jitter}")
    stops: list[tenacity.stop.stop_base] = []
    if attempts is not None:
        stops.append(tenacity.stop_after_attempt(attempts))
    if deadline_s is not None:
        stops.append(tenacity.stop_after_delay(deadline_s))
    logger = logger or log
    of = f"/{attempts}" if attempts is not None else ""

    def before_sleep(rs: tenacity.RetryCallState) -> None:
        e = rs.outcome.exception() if rs.outcome is not None else None
        first = str(e).splitlines()[0] if e is not None and str(e) else ""
        logger.log(level, "%s: attempt %d%s failed (%s%s); retrying in %.2f s", what, rs.attempt_number, of,
                   type(e).__name__, f": {first}" if first else "", rs.upcoming_sleep)

    return tenacity.Retrying(
        stop=tenacity.stop_any(*stops),
        wait=Backoff(base_delay, max_delay, jitter, deadline_s),
        retry=tenacity.retry_if_exception(_retry_predicate(on)),
        before_sleep=before_sleep,
        reraise=True,
        sleep=sleep,
    )


def call_with_retry(fn: Callable[[], T], what: str, **policy: Any) -> T:
    """``fn()``, retried by :func:`retrying` with ``policy``; the last error if it never succeeds."""
    return retrying(what, **policy)(fn)
