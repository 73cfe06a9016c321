"""Ingest over HTTP: processes that are not Ray drivers post Arrow IPC streams to a run.

The endpoint is a plain FastAPI app (:func:`make_ingest_app`) that forwards each body to
the run's buffer actor, with the same schema checks and the same acknowledgement as
:meth:`RunClient.ingest <ray_interactive.runtime.client.RunClient.ingest>`:

* ``POST /v1/sources/{source}/ingest?batch_id=...`` - body: an Arrow IPC *stream*
  (``application/vnd.apache.arrow.stream``); answer: the ack ``{"source", "rows",
  "first", "last", "batch_id", "duplicate"}``. A repeated ``batch_id`` with the same rows
  gets the first ack back with ``duplicate: true`` and stores nothing; with other rows it
  is refused (400).
* ``GET /v1/sources`` - the sources with their rows, weights and schemas.
* ``GET /healthz`` - liveness, the only route without the token.

Every other route needs ``Authorization: Bearer <token>``. Refusals are JSON
``{"error": "..."}``: 401 without or with a wrong token, 400 for a body that is empty, not
an Arrow IPC stream, holds no rows, or does not fit the source's schema (the buffer's
message, which names the column), 404 for an unknown source, 413 over the size limit,
503 when the buffer stays unavailable through the retries. A request that is not even
HTTP (a Content-Length that is not a number, say) gets a JSON 400 too, from
:func:`serve_in_thread`'s server, and so does a body that stops short of its
Content-Length (after ``body_idle_s`` without a byte).

The routes are plain: they put rows into an :class:`IngestTarget`. On Ray they are served
by one small actor running uvicorn in a thread (``ray_interactive.runtime.ingest_server``;
``RunConfig.http_ingest`` makes ``start_run`` start it), or mounted in an app you already
run (``app.mount("/ingest", ingest_app(buffer, token))`` - Gradio apps are FastAPI apps
too). Clients use :func:`~ray_interactive.serve.ingest_client.post_table`.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
import re
import socket
import sys
import threading
import time
import uuid
from typing import Any, Protocol

import pyarrow as pa
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from ray_interactive.core.plain import clip
from ray_interactive.data.schemas import check_unique_columns
from ray_interactive.serve.ingest_client import (
    ARROW_STREAM,
    IngestRejected,
    IngestUnavailable,
    list_sources,
    post_table,
)

__all__ = [
    "ARROW_STREAM",
    "IngestError",
    "IngestRejected",
    "IngestTarget",
    "IngestUnavailable",
    "list_sources",
    "make_ingest_app",
    "post_table",
    "serve_in_thread",
]

log = logging.getLogger(__name__)

MiB = 1 << 20
#: Client-chosen batch ids: short, and safe in a URL, a log line and a file name.
BATCH_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_BODY_TYPES = {"", ARROW_STREAM, "application/octet-stream"}
#: What an Arrow IPC stream ends with (continuation marker, zero-length message).
END_OF_STREAM = b"\xff\xff\xff\xff\x00\x00\x00\x00"
ROUTES = "POST /v1/sources/{source}/ingest, GET /v1/sources, GET /healthz"
TOKEN_FILE, URL_FILE = "ingest_token", "ingest_url"
CLOSE = {"Connection": "close"}


class IngestError(Exception):
    """An HTTP refusal, rendered as ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # default=: numpy scalars and the like in an ack become plain numbers
    body = json.dumps(doc, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    return Response(body, status_code=status, headers=headers, media_type="application/json")


class IngestTarget(Protocol):
    """Where the routes put rows: a run's data buffer (``ray_interactive.runtime.ingest_server``
    wraps the buffer actor). It raises :class:`IngestError` for what a client must hear; a
    ``ValueError`` from ``ingest`` (a :class:`~ray_interactive.data.buffer.DataBuffer`'s
    refusal) is a 400 with its message."""

    def sources(self) -> dict[str, Any]: ...

    def ingest(self, table: pa.Table, source: str, batch_id: str) -> dict[str, Any]: ...


async def _read_body(request: Request, limit: int, idle_s: float) -> bytes:
    """The body, or 413 once it is over ``limit`` bytes, or 400 once no byte came for
    ``idle_s`` seconds (a Content-Length larger than the body sent: HTTP cannot tell
    that from a slow network, so a stall is where the request ends).

    A body a little over the limit (up to twice) is read to its end and dropped, so the
    client can read the 413 instead of a reset connection; a larger one is cut off.
    """
    declared = request.headers.get("content-length")
    if declared is not None:  # uvicorn's parser checks it; a server the app is mounted in may not
        if not (declared.isascii() and declared.isdigit()):
            raise IngestError(400, f"the Content-Length header {clip(declared, 40)!r} is not a number of bytes")
        if int(declared) > 2 * limit:
            raise IngestError(413, f"the body ({declared} bytes) is over the limit of {limit} bytes")
    buf = bytearray()
    received = 0
    chunks = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), idle_s)
        except StopAsyncIteration:
            break
        except TimeoutError:  # the rest of the body will not come: answer, and close the connection
            raise IngestError(400, _short_body(received, declared, f"no byte came for {idle_s:g} s"), CLOSE) from None
        except ClientDisconnect:  # nobody is left to read the answer; no traceback in the log either
            raise IngestError(400, _short_body(received, declared, "the client closed the connection"), CLOSE) from None
        received += len(chunk)
        if received <= limit:
            buf += chunk
        elif received > 2 * limit:
            break
    if received > limit:
        raise IngestError(413, f"the body ({'over ' if received > 2 * limit else ''}{received} bytes) is over the limit "
                           f"of {limit} bytes; send smaller batches")
    return bytes(buf)


def _short_body(received: int, declared: str | None, why: str) -> str:
    if declared is None:
        return f"the body ended early: {why} after {received} bytes; nothing was stored"
    return (f"the request's Content-Length ({declared}) does not match its body: {why} after {received} bytes; "
            "nothing was stored; send a Content-Length equal to the body's size in bytes")


def _decode(body: bytes, max_decoded_bytes: int) -> pa.Table:
    """The Arrow IPC stream in ``body`` as a table, fully validated, or 400."""
    if not body:
        raise IngestError(400, f"empty body: send the rows as an Arrow IPC stream ({ARROW_STREAM})")
    if body[:6] == b"ARROW1":
        raise IngestError(400, "the body is an Arrow IPC file; send the IPC stream format (pyarrow.ipc.new_stream)")
    batches: list[pa.RecordBatch] = []
    decoded = 0
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(body))
        for batch in reader:
            batch.validate(full=True)  # offsets, lengths, UTF-8: bad data must not reach the buffer
            decoded += batch.nbytes
            if decoded > max_decoded_bytes:
                raise IngestError(413, f"the decoded rows are over the limit of {max_decoded_bytes} bytes")
            batches.append(batch)
        table = pa.Table.from_batches(batches, schema=reader.schema)
    except (pa.ArrowException, ValueError, OSError) as e:
        first = clip((str(e).splitlines() or [type(e).__name__])[0], 160)
        raise IngestError(400, f"the body is not a valid Arrow IPC stream ({first}); send the whole stream "
                          "pyarrow.ipc.new_stream writes, with a Content-Length equal to its size") from None
    if not body.endswith(END_OF_STREAM):
        # A stream cut off at a message boundary reads like a complete one: refuse it whole,
        # or the batches before the cut would be stored and the upload look done.
        raise IngestError(400, "the Arrow IPC stream has no end-of-stream marker: it was cut off (or its writer was "
                           "not closed); nothing was stored, send the whole stream again with the same batch_id")
    if table.num_rows == 0:
        what = "no record batch" if not batches else "no rows"
        raise IngestError(400, f"the stream holds {what}; nothing to ingest")
    try:
        check_unique_columns(table.column_names, "the stream")
    except ValueError as e:
        raise IngestError(400, str(e)) from None
    return table


def token_guarded_app(title: str, token: str, routes: str, what: str, on_error: str) -> tuple[FastAPI, Any]:
    """A FastAPI app whose every refusal is JSON ``{"error": ...}`` (404/405 name ``routes``;
    an unexpected exception is a 500 that says ``on_error``), and the dependency that
    requires ``Authorization: Bearer <token>``. The ingest and control APIs share it: one
    rule for who may call a run over HTTP."""
    if not isinstance(token, str) or len(token) < 16:
        raise ValueError("an API token must be a string of at least 16 characters (secrets.token_urlsafe(32))")
    expected = token.encode()
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(IngestError)
    async def _rejected(request: Request, exc: IngestError) -> Response:
        return _json({"error": exc.message}, exc.status, exc.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path[:200]}; routes: {routes}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path[:200]}; routes: {routes}"
        else:
            message = str(exc.detail)[:500]
        return _json({"error": message}, exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e.get('loc', ()))[:80]}: {str(e.get('msg', ''))[:200]}" for e in exc.errors()[:5]
        )
        return _json({"error": f"bad request: {problems}"}, 400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        log.exception("%s failed", what)
        return _json({"error": f"internal error ({type(exc).__name__}); {on_error}"}, 500)

    async def require_token(request: Request) -> None:
        header = request.headers.get("authorization")
        if not header:
            raise IngestError(401, "missing token: send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        scheme, _, given = header.partition(" ")
        # compare_digest: the time taken says nothing about how much of the token matched
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise IngestError(401, "invalid token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})

    return app, require_token


def make_ingest_app(
    buffer: IngestTarget,
    token: str,
    max_body_bytes: int = 64 * MiB,
    max_decoded_bytes: int | None = None,
    body_idle_s: float = 30.0,
) -> FastAPI:
    """The ingest routes for one run's buffer, behind a bearer token.

    Serve it with :func:`serve_in_thread` (``ray_interactive.runtime.ingest_server`` does,
    in an actor), or mount it in an app you run:
    ``app.mount("/ingest", ingest_app(buffer_actor, token))``.
    ``max_decoded_bytes`` (default 4x ``max_body_bytes``) bounds compressed streams;
    ``body_idle_s`` is how long a body may stall before the request is refused.
    """
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be >= 1")
    max_decoded = max_decoded_bytes or 4 * max_body_bytes
    app, require_token = token_guarded_app("ray_interactive ingest", token, ROUTES, "ingest request",
                                           "the rows were not stored, retry later")

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/v1/sources", dependencies=[Depends(require_token)])
    def sources() -> Response:  # a plain def: FastAPI runs it in its threadpool
        return _json(buffer.sources())

    @app.post("/v1/sources/{source}/ingest", dependencies=[Depends(require_token)])
    async def ingest(source: str, request: Request, batch_id: str | None = None) -> Response:
        if batch_id is not None and not BATCH_ID.fullmatch(batch_id):
            raise IngestError(400, "batch_id must be 1-128 characters of A-Z a-z 0-9 . _ : -")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in _BODY_TYPES:
            raise IngestError(415, f"Content-Type {ctype!r}: send the rows as {ARROW_STREAM}")
        body = await _read_body(request, max_body_bytes, body_idle_s)
        table = await run_in_threadpool(_decode, body, max_decoded)
        # no batch_id from the client: one per request, so our own retries store the rows once
        try:
            ack = await run_in_threadpool(buffer.ingest, table, source, batch_id or uuid.uuid4().hex)
        except ValueError as e:  # a target's refusal of the rows (a plain DataBuffer says why this way)
            raise IngestError(400, clip(str(e), 1000)) from None
        return _json(ack)

    return app


#: What a request must look like, for refusals of requests that are not even HTTP.
EXPECTED_REQUEST = (
    "send POST /v1/sources/{source}/ingest with 'Authorization: Bearer <token>', a Content-Length equal to the "
    f"body's size in bytes (or Transfer-Encoding: chunked) and the rows as {ARROW_STREAM}"
)
#: What h11 says of a request it cannot parse -> what that means to the sender.
_MALFORMED = (
    ("conflicting Content-Length", "it has Content-Length headers that disagree"),
    ("Content-Length", "its Content-Length header is not a number of bytes (digits only, at most 20)"),
    ("Transfer-Encoding", "its Transfer-Encoding is not 'chunked', the only one taken"),
    ("chunk", "its chunked body is malformed"),
    ("Host", "it needs exactly one Host header"),
    ("request line", "its first line is not 'METHOD /path HTTP/1.1'"),
    ("too long", "its request line or headers are too long"),
    ("header", "a header line is malformed"),
)


def malformed_request_message(error: BaseException | None) -> str:
    """The ``{"error"}`` text for a request the HTTP parser refused (``error``: its
    exception, if known): what is wrong with it, and what the endpoint expects."""
    detail = str(error or "")
    what = next((meaning for key, meaning in _MALFORMED if key.lower() in detail.lower()), "it is not valid HTTP/1.1")
    return f"malformed HTTP request: {what}; nothing was stored; {EXPECTED_REQUEST}"


@functools.cache
def json_errors_protocol() -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, answering a request it cannot parse (a Content-Length that is
    not a number, a garbled request line) with the endpoint's JSON ``{"error": ...}``, 400,
    instead of a plain-text "Invalid HTTP request received.": such a request never reaches
    the app. uvicorn takes a protocol class for exactly this (``Config(http=...)``); h11 is
    what it picks without httptools, so nothing else changes."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class JSONErrorsH11Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            # Called from the parser's ``except h11.RemoteProtocolError``: the error is at hand.
            body = json.dumps({"error": malformed_request_message(sys.exc_info()[1])}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return JSONErrorsH11Protocol


class ServerThread:
    """uvicorn serving an app from a daemon thread (see :func:`serve_in_thread`)."""

    def __init__(self, server: Any, thread: threading.Thread, url: str, host: str, port: int) -> None:
        self.server, self.thread, self.url, self.host, self.port = server, thread, url, host, port

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0,
                    public_host: str | None = None) -> ServerThread:
    """Serve ``app`` with uvicorn on ``host:port`` (0: a free port) from a daemon thread.

    Binds before returning, so the port is known and a taken port raises ``OSError`` here.
    ``public_host``: the address the URL names when ``host`` is every interface (default:
    this machine's name).
    """
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="off",
                            http=json_errors_protocol())
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="ingest-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the HTTP server on {host}:{bound} did not start")
        time.sleep(0.01)
    shown = host
    if host in ("0.0.0.0", "::", ""):  # every interface: show one others can reach
        shown = public_host or socket.gethostname()
    url = f"http://[{shown}]:{bound}" if ":" in shown else f"http://{shown}:{bound}"
    return ServerThread(server, thread, url, host, bound)


