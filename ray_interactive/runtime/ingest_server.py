"""HTTP ingest on Ray: the ingest routes (:mod:`ray_interactive.serve.ingest_http`) over a
run's buffer actor, served by one small actor running uvicorn in a thread."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
from fastapi import FastAPI

from ray_interactive.core.config import DEFAULT_NAMESPACE, actor_name
from ray_interactive.core.plain import clip
from ray_interactive.core.retry import call_with_retry
from ray_interactive.data.shards import shard_of
from ray_interactive.runtime.lifecycle import actor_restarting, buffer_shards
from ray_interactive.serve.ingest_http import (
    TOKEN_FILE,
    URL_FILE,
    IngestError,
    MiB,
    ServerThread,
    make_ingest_app,
    serve_in_thread,
)

log = logging.getLogger(__name__)

# Handles of the servers this process started: a named actor that is not detached is
# destroyed when its creator drops the last handle.
_SERVERS: dict[tuple[str, str], Any] = {}


class RayBuffer:
    """The buffer actor as an :class:`~ray_interactive.serve.ingest_http.IngestTarget`: calls from the
    server's worker threads, errors mapped to HTTP."""

    def __init__(self, handle: Any, timeout: float = 60.0, retry_for: float = 20.0) -> None:
        # A list: the buffer's shards, the primary first (an ingest goes to its batch_id's shard).
        self.shards = list(handle) if isinstance(handle, list | tuple) else [handle]
        self.handle, self.timeout, self.retry_for = self.shards[0], timeout, retry_for
        self._known: set[str] = set()

    def _get(self, call: Any) -> Any:
        """``ray.get(call())``, retried for ``retry_for`` s while the actor is restarted.

        Safe for ingest: every call carries a batch_id, so a call that was stored before
        the crash is acknowledged as a duplicate the second time.
        """
        def once() -> Any:
            try:
                return ray.get(call(), timeout=self.timeout)
            except ray.exceptions.GetTimeoutError:
                raise IngestError(504, f"the data buffer did not answer within {self.timeout:g} s; "
                                   "retry with the same batch_id") from None

        try:
            return call_with_retry(once, "data buffer call", deadline_s=self.retry_for, on=actor_restarting,
                                   base_delay=0.1, max_delay=1.0, logger=log, level=logging.INFO)
        except ray.exceptions.RayActorError as e:
            if not actor_restarting(e):
                raise
            # still unavailable at the deadline
            raise IngestError(503, f"the data buffer is unavailable: {str(e).splitlines()[0]}; "
                               "retry with the same batch_id") from None

    def sources(self) -> dict[str, Any]:
        doc = self._get(lambda: self.handle.sources.remote())
        self._known = set(doc)
        return doc

    def is_known(self, source: str) -> bool:
        return source in self._known or source in self.sources()

    def ingest(self, table: pa.Table, source: str, batch_id: str) -> dict[str, Any]:
        if not self.is_known(source):
            raise IngestError(404, f"unknown source {clip(source, 80)!r}; sources: {', '.join(sorted(self._known))}")
        ref = ray.put(table)  # once, however many retries
        try:
            shard = self.shards[shard_of(batch_id, len(self.shards))]
            return self._get(lambda: shard.ingest.remote(ref, source, batch_id=batch_id))
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, ValueError):  # the buffer's own message: which column, why
                raise IngestError(404 if not self.is_known(source) else 400, str(cause)) from None
            raise IngestError(500, f"the data buffer failed: {type(cause).__name__}: {cause}") from None


def ingest_app(buffer_handle: Any, token: str, max_body_bytes: int = 64 * MiB, max_decoded_bytes: int | None = None,
               timeout: float = 60.0) -> FastAPI:
    """The ingest routes over a run's buffer actor, or a list of its shards with the
    primary first (mount it in an app you run: ``app.mount("/ingest", ingest_app(buffer, token))``)."""
    return make_ingest_app(RayBuffer(buffer_handle, timeout=timeout), token, max_body_bytes, max_decoded_bytes)


@ray.remote(num_cpus=0)
class IngestServerActor:
    """Serves :func:`make_ingest_app` for a run's buffer from uvicorn in a thread."""

    def __init__(
        self,
        buffer: Any,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int = 64 * MiB,
        token_file: str | None = None,
    ) -> None:
        logging.basicConfig(level=logging.INFO)
        self._token_file = token_file
        self._error: Exception | None = None
        self._server: ServerThread | None = None
        try:  # keep the actor up so the caller gets the reason, not a dead actor
            self._server = serve_in_thread(ingest_app(buffer, token, max_body_bytes), host, port,
                                           public_host=ray.util.get_node_ip_address())
        except Exception as e:
            self._error = e
        else:
            log.info("HTTP ingest at %s", self._server.url)

    def info(self) -> dict[str, Any]:
        if self._error is not None:
            raise self._error
        assert self._server is not None
        s = self._server
        return {"url": s.url, "host": s.host, "port": s.port, "token_file": self._token_file}

    def address(self) -> str:
        return self.info()["url"]

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # also when the file was already there with other modes
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def start_ingest_server(
    run: str,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    run_dir: str | Path | None = None,
    max_body_bytes: int = 64 * MiB,
    detached: bool = False,
) -> tuple[str, str]:
    """Serve HTTP ingest for ``run`` (whose buffer must be up); returns ``(url, token)``.

    The server actor (``<run>.ingest``) runs on this process's node, so a loopback
    ``host`` (the default) is reachable from here only; bind ``0.0.0.0`` to accept other
    machines. Without ``token``, the run dir's ``ingest_token`` is kept (a resumed run
    keeps its token) or a new one is made. The token goes to ``<run_dir>/ingest_token``
    (mode 0600), the URL to ``<run_dir>/ingest_url``.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    buffer = buffer_shards(run, namespace)
    try:
        running = ingest_info(run, namespace)
    except LookupError:
        pass
    else:
        raise ValueError(f"run {run!r} already serves HTTP ingest at {running['url']}")
    if run_dir is None:
        controller = ray.get_actor(actor_name(run, "controller"), namespace=namespace)
        run_dir = ray.get(controller.config.remote())["run_dir"]
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    token_file = run_dir / TOKEN_FILE
    if token is None and token_file.exists():
        token = token_file.read_text().strip() or None
    token = token or secrets.token_urlsafe(32)
    write_private(token_file, token)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("HTTP ingest binds %s: plain HTTP, the token travels in clear; put TLS in front of it", host)
    actor = IngestServerActor.options(
        name=actor_name(run, "ingest"),
        namespace=namespace,
        lifetime="detached" if detached else None,
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False),
    ).remote(buffer, token, host, port, max_body_bytes, str(token_file))
    try:
        url = ray.get(actor.address.remote(), timeout=60)
    except Exception as e:
        ray.kill(actor)
        cause = getattr(e, "cause", None) or e
        raise ValueError(f"cannot serve HTTP ingest on {host}:{port}: {cause}") from None
    _SERVERS[(namespace, run)] = actor
    (run_dir / URL_FILE).write_text(url + "\n")
    return url, token


def ingest_info(run: str, namespace: str = DEFAULT_NAMESPACE) -> dict[str, Any]:
    """``{"url", "host", "port", "token_file"}`` of a run's ingest server (LookupError if none)."""
    try:
        actor = ray.get_actor(actor_name(run, "ingest"), namespace=namespace)
    except ValueError:
        raise LookupError(f"run {run!r} serves no HTTP ingest (start it with --http-ingest [HOST:]PORT)") from None
    return ray.get(actor.info.remote(), timeout=30)


def stop_ingest_server(run: str, namespace: str = DEFAULT_NAMESPACE) -> None:
    """Stop and remove a run's ingest server, if it has one."""
    _SERVERS.pop((namespace, run), None)
    try:
        actor = ray.get_actor(actor_name(run, "ingest"), namespace=namespace)
    except ValueError:
        return
    try:
        ray.get(actor.stop.remote(), timeout=10)
    except Exception:
        pass
    ray.kill(actor)
