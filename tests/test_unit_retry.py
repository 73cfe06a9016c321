"""ray_interactive.core.retry: the one retry policy (bounded, backoff with jitter, logged, last error raised)."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from typing import Any

import pytest

from ray_interactive.core.retry import call_with_retry, retrying
from ray_interactive.runtime.lifecycle import actor_restarting


class Flaky:
    """Fails ``failures`` times with ``error`` (a fresh instance each time), then returns ``value``."""

    def __init__(self, failures: int, error: type[BaseException] = ConnectionError, value: Any = "ok") -> None:
        self.failures, self.error, self.value, self.calls = failures, error, value, 0

    def __call__(self) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return self.value


def test_success_after_failures_returns_the_value_and_sleeps_the_backoff() -> None:
    slept: list[float] = []
    fn = Flaky(3)
    assert call_with_retry(fn, "op", attempts=5, on=ConnectionError, base_delay=0.2, max_delay=0.5,
                           jitter=0, sleep=slept.append) == "ok"
    assert fn.calls == 4
    assert slept == [0.2, 0.4, 0.5]  # doubling, capped at max_delay


def test_jitter_stretches_each_wait_by_at_most_the_factor_never_shortens_it() -> None:
    slept: list[float] = []
    with pytest.raises(ConnectionError):
        call_with_retry(Flaky(100), "op", attempts=40, on=ConnectionError, base_delay=0.1, max_delay=0.1,
                        jitter=0.5, sleep=slept.append)
    assert len(slept) == 39
    assert all(0.1 <= s <= 0.15 for s in slept)
    assert len(set(slept)) > 1  # really random


def test_the_last_error_is_raised_as_it_was_after_the_attempts() -> None:
    slept: list[float] = []
    fn = Flaky(10)
    with pytest.raises(ConnectionError, match="failure 3") as info:
        call_with_retry(fn, "op", attempts=3, on=ConnectionError, sleep=slept.append)
    assert type(info.value) is ConnectionError
    assert fn.calls == 3 and len(slept) == 2


def test_one_attempt_means_no_retry() -> None:
    fn = Flaky(1)
    with pytest.raises(ConnectionError):
        call_with_retry(fn, "op", attempts=1, on=ConnectionError, sleep=pytest.fail)
    assert fn.calls == 1


def test_errors_not_matched_by_on_are_raised_at_once() -> None:
    fn = Flaky(1, error=ValueError)
    with pytest.raises(ValueError, match="failure 1"):
        call_with_retry(fn, "op", attempts=5, on=ConnectionError, sleep=pytest.fail)
    assert fn.calls == 1


def test_a_subclass_of_on_is_retried_and_a_predicate_can_exclude_one() -> None:
    class Refused(ConnectionRefusedError):
        pass

    fn = Flaky(2, error=Refused)
    assert call_with_retry(fn, "op", attempts=3, on=(TimeoutError, ConnectionError), sleep=lambda s: None) == "ok"
    fn = Flaky(2, error=Refused)
    with pytest.raises(Refused):
        call_with_retry(fn, "op", attempts=3, on=lambda e: isinstance(e, ConnectionError) and not isinstance(e, Refused),
                        sleep=pytest.fail)
    assert fn.calls == 1


def test_keyboard_interrupt_is_not_retried_by_default() -> None:
    fn = Flaky(1, error=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        call_with_retry(fn, "op", attempts=5, sleep=pytest.fail)  # on=Exception by default
    assert fn.calls == 1


def test_the_deadline_ends_the_retries_and_no_wait_runs_past_it() -> None:
    fn = Flaky(10_000)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError):
        call_with_retry(fn, "op", deadline_s=0.05, on=ConnectionError, base_delay=0.01, max_delay=0.04, jitter=0)
    took = time.monotonic() - t0
    assert 0.05 <= took < 0.09  # the last wait is cut to the deadline, not a full max_delay past it
    assert 3 <= fn.calls <= 10


def test_attempts_and_deadline_together_whichever_ends_first() -> None:
    fn = Flaky(10)
    with pytest.raises(ConnectionError):
        call_with_retry(fn, "op", attempts=2, deadline_s=60, on=ConnectionError, sleep=lambda s: None)
    assert fn.calls == 2


def test_a_zero_deadline_tries_once() -> None:
    fn = Flaky(10)
    with pytest.raises(ConnectionError):
        call_with_retry(fn, "op", deadline_s=0, on=ConnectionError, sleep=pytest.fail)
    assert fn.calls == 1


@pytest.mark.parametrize(
    "policy, message",
    [
        ({}, "unbounded"),
        ({"attempts": 0}, "attempts must be >= 1"),
        ({"deadline_s": -1}, "deadline_s must be >= 0"),
        ({"deadline_s": float("nan")}, "deadline_s must be >= 0"),
        ({"attempts": 2, "base_delay": -0.1}, "must be >= 0"),
        ({"attempts": 2, "jitter": -1}, "must be >= 0"),
    ],
)
def test_bad_policies_are_refused(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        retrying("op", **policy)


@pytest.mark.parametrize("on", [(), ("ConnectionError",), 3])
def test_bad_on_is_refused(on: Any) -> None:
    with pytest.raises(TypeError, match="on= must be"):
        retrying("op", attempts=2, on=on)


def test_each_retry_is_logged_with_what_the_attempt_and_the_error(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test_unit_retry")
    with caplog.at_level(logging.INFO, logger="test_unit_retry"):
        call_with_retry(Flaky(2), "posting rows", attempts=4, on=ConnectionError, base_delay=0.25, jitter=0,
                        logger=logger, level=logging.INFO, sleep=lambda s: None)
    lines = [r.getMessage() for r in caplog.records if r.name == "test_unit_retry"]
    assert lines == [
        "posting rows: attempt 1/4 failed (ConnectionError: failure 1); retrying in 0.25 s",
        "posting rows: attempt 2/4 failed (ConnectionError: failure 2); retrying in 0.50 s",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "test_unit_retry")


def test_retrying_is_iterable_and_the_attempt_body_can_return() -> None:
    fn = Flaky(2)

    def run() -> Any:
        for attempt in retrying("op", attempts=3, on=ConnectionError, sleep=lambda s: None):
            with attempt:
                return fn()
        raise AssertionError("unreachable")

    assert run() == "ok" and fn.calls == 3


def test_a_retried_call_keeps_its_arguments_like_a_batch_id() -> None:
    """What the ingest paths rely on: every attempt sends the same batch id."""
    seen: list[str] = []

    def send(batch_id: str = "b-1") -> str:
        seen.append(batch_id)
        if len(seen) < 3:
            raise ConnectionResetError("reset")
        return batch_id

    assert call_with_retry(send, "ingest", attempts=3, on=OSError, sleep=lambda s: None) == "b-1"
    assert seen == ["b-1"] * 3


def test_actor_restarting_is_false_for_plain_errors() -> None:
    assert not actor_restarting(ConnectionError("x"))
    assert not actor_restarting(ValueError("x"))


def test_actor_restarting_retries_actor_errors_but_not_task_errors() -> None:
    exceptions = pytest.importorskip("ray.exceptions")
    assert actor_restarting(exceptions.RayActorError())
    assert actor_restarting(exceptions.ActorUnavailableError("restarting", None))
    assert not actor_restarting(exceptions.GetTimeoutError("slow"))
    task_error = exceptions.RayTaskError("f", "traceback", exceptions.RayActorError())
    assert not actor_restarting(task_error)
    assert not actor_restarting(task_error.as_instanceof_cause())  # a subclass of RayActorError too


def test_the_ingest_client_still_imports_neither_ray_nor_torch() -> None:
    code = ("import sys, ray_interactive.serve.ingest_client, ray_interactive.core.retry; "
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# -- the ingest client's use of the policy, against a real local HTTP server ------------------


class _Server:
    """A stdlib HTTP server answering with the scripted ``(status, json body)`` in turn."""

    def __init__(self, answers: list[tuple[int, dict[str, Any]]]) -> None:
        import http.server
        import json
        import threading

        self.answers, self.batch_ids = list(answers), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                from urllib.parse import parse_qs, urlparse

                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.batch_ids.append(parse_qs(urlparse(self.path).query).get("batch_id", [None])[0])
                status, doc = outer.answers.pop(0)
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's retries without their waits (the waits are recorded)."""
    import ray_interactive.serve.ingest_client as ic

    slept: list[float] = []
    real = ic.call_with_retry
    monkeypatch.setattr(ic, "call_with_retry", lambda fn, what, **kw: real(fn, what, **{**kw, "sleep": slept.append}))
    return slept


def _table() -> Any:
    import pyarrow as pa

    return pa.table({"x": [1, 2, 3]})


def test_ingest_client_retries_5xx_with_the_same_batch_id(no_sleep: list[float]) -> None:
    from ray_interactive.serve.ingest_client import post_table

    ack = {"source": "live", "rows": 3, "first": 0, "last": 2, "batch_id": "b-7", "duplicate": True}
    server = _Server([(503, {"error": "the data buffer is unavailable"}), (502, {"error": "bad gateway"}), (200, ack)])
    try:
        assert post_table(server.url, "live", _table(), token="t", batch_id="b-7") == ack
    finally:
        server.close()
    assert server.batch_ids == ["b-7"] * 3
    assert len(no_sleep) == 2 and 0.2 <= no_sleep[0] <= 0.25 and 0.4 <= no_sleep[1] <= 0.5


def test_ingest_client_gives_up_with_the_last_5xx_message_and_status(no_sleep: list[float]) -> None:
    from ray_interactive.serve.ingest_client import IngestUnavailable, post_table

    server = _Server([(503, {"error": f"unavailable {i}"}) for i in range(3)])
    try:
        with pytest.raises(IngestUnavailable, match=r"POST .*/v1/sources/live/ingest failed after 3 attempt\(s\): "
                                                    r"unavailable 2$") as info:
            post_table(server.url, "live", _table(), token="t", retries=2)
    finally:
        server.close()
    assert info.value.status == 503 and "batch_id" not in str(info.value)
    assert len(no_sleep) == 2


def test_ingest_client_does_not_retry_a_4xx(no_sleep: list[float]) -> None:
    from ray_interactive.serve.ingest_client import IngestRejected, list_sources

    server = _Server([(401, {"error": "bad token"}), (200, {})])
    try:
        with pytest.raises(IngestRejected, match="HTTP 401: bad token") as info:
            list_sources(server.url, token="t")
    finally:
        server.close()
    assert info.value.status == 401 and len(server.answers) == 1 and no_sleep == []


def test_ingest_client_retries_a_refused_connection_then_says_so(no_sleep: list[float]) -> None:
    from ray_interactive.serve.ingest_client import IngestUnavailable, list_sources

    from .conftest import free_port

    port = free_port()  # a port nothing listens on
    with pytest.raises(IngestUnavailable, match=r"GET .*/v1/sources failed after 2 attempt\(s\): .*refused") as info:
        list_sources(f"http://127.0.0.1:{port}", token="t", retries=1)
    assert info.value.status is None and len(no_sleep) == 1
