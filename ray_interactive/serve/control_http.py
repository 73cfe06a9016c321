"""A run's control API over HTTP: what the CLI asks a live run, without a Ray connection.

Every run's controller serves it (``RunConfig.control_api``), on loopback by default, with
the URL in ``<run_dir>/api_url`` and a bearer token in ``<run_dir>/api_token`` (mode
0600): whoever may read the run directory may steer the run, as with HTTP ingest, and
the same rule (:func:`~ray_interactive.serve.ingest_http.token_guarded_app`) guards both.

* ``GET /v1/status`` - the run's status (as :meth:`RunClient.status`).
* ``GET /v1/metrics?keys=loss,lr&since=N&until=N&branch=B&max_points=N`` - a branch's series.
* ``GET /v1/commands?limit=N&newest_first=false`` - the command log as flat records.
* ``POST /v1/commands?source=cli`` - body: a command as JSON (``{"kind": ..., ...}``);
  answer: its record, ``accepted`` or ``rejected`` with the reason (a rejection is an answer,
  200, and is logged; a body that is not JSON is a 400).
* ``GET /v1/commands/{id}?wait=S`` - a command's record, waiting up to S seconds (at most
  30) while it is still accepted; 404 for an unknown id.
* ``GET /v1/checkpoints`` - the run's checkpoints.
* ``GET /healthz`` - liveness, the only route without the token.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Protocol

from fastapi import Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from ray_interactive.core.commands import CommandRecord, CommandSource, check_payload_shape, loggable
from ray_interactive.core.plain import one_of
from ray_interactive.serve.control_client import MAX_WAIT_S, TOKEN_FILE, URL_FILE
from ray_interactive.serve.ingest_http import IngestError, ServerThread, _json, token_guarded_app

ROUTES = ("GET /v1/status, GET /v1/metrics, GET /v1/commands, POST /v1/commands, GET /v1/commands/{id}, "
          "GET /v1/checkpoints, GET /healthz")
#: A command is a few hundred bytes; anything near this is not one.
MAX_COMMAND_BYTES = 1 << 20


class ControlTarget(Protocol):
    """What the routes ask: a run's controller (``ControllerActor`` is one, in its own process)."""

    def status(self) -> dict[str, Any]: ...

    def metrics(self, **query: Any) -> dict[str, Any]: ...

    def commands(self, limit: int | None = None, newest_first: bool = False) -> list[dict[str, Any]]: ...

    def submit(self, payload: Any, source: str | None = None) -> CommandRecord: ...

    def refuse(self, payload: Any, message: str) -> CommandRecord: ...

    def wait_command(self, command_id: str, timeout: float = 30.0) -> CommandRecord | None: ...

    def checkpoints(self) -> list[dict[str, Any]]: ...


def _int(value: str | None, name: str, minimum: int = 0) -> int | None:
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()) or int(value) < minimum:
        raise IngestError(400, f"{name} must be a whole number >= {minimum}, got {value[:40]!r}")
    return int(value)


def _record(rec: CommandRecord) -> Response:
    return _json(rec.model_dump(mode="json"))


def make_control_app(target: ControlTarget, token: str) -> Any:
    """The control routes over ``target``, behind a bearer token (serve it with
    :func:`~ray_interactive.serve.ingest_http.serve_in_thread`)."""
    app, require_token = token_guarded_app("ray_interactive control", token, ROUTES, "control request",
                                           "nothing was changed")
    guarded = [Depends(require_token)]

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    # plain defs: FastAPI runs them in its threadpool, so a slow controller lock never
    # blocks the server's event loop
    @app.get("/v1/status", dependencies=guarded)
    def status() -> Response:
        return _json(target.status())

    @app.get("/v1/metrics", dependencies=guarded)
    def metrics(keys: str | None = None, since: str | None = None, until: str | None = None,
                branch: str | None = None, max_points: str | None = None) -> Response:
        query = {
            "keys": [k for k in keys.split(",") if k] if keys else None,
            "since": _int(since, "since"), "until": _int(until, "until"), "branch": branch or None,
            "max_points": _int(max_points, "max_points", minimum=3),
        }
        return _json(target.metrics(**query))

    @app.get("/v1/commands", dependencies=guarded)
    def commands(limit: str | None = None, newest_first: bool = False) -> Response:
        return _json(target.commands(_int(limit, "limit"), newest_first))

    @app.post("/v1/commands", dependencies=guarded)
    async def submit(request: Request, source: str = "api") -> Response:
        body = await request.body()
        if len(body) > MAX_COMMAND_BYTES:
            raise IngestError(413, f"a command is at most {MAX_COMMAND_BYTES} bytes of JSON, got {len(body)}")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise IngestError(400, f"the body must be a command as JSON ({e})") from None
        try:
            one_of(CommandSource, source, "source")
            check_payload_shape(payload)
        except ValueError as e:  # refused, and logged like any other refusal
            return _record(await run_in_threadpool(target.refuse, loggable(payload), str(e)))
        if isinstance(payload, dict) and "id" not in payload:
            payload = {**payload, "id": uuid.uuid4().hex}  # a retried POST is then answered from the log
        return _record(await run_in_threadpool(target.submit, payload, source))

    @app.get("/v1/commands/{command_id}", dependencies=guarded)
    def command(command_id: str, wait: float = 0.0) -> Response:
        if not 0.0 <= wait <= MAX_WAIT_S:
            raise IngestError(400, f"wait must be 0-{MAX_WAIT_S:g} seconds, got {wait:g}")
        rec = target.wait_command(command_id, wait)
        if rec is None:
            raise IngestError(404, f"no command with id {command_id[:80]!r}")
        return _record(rec)

    @app.get("/v1/checkpoints", dependencies=guarded)
    def checkpoints() -> Response:
        return _json(target.checkpoints())

    return app


__all__ = ["ROUTES", "TOKEN_FILE", "URL_FILE", "ControlTarget", "ServerThread", "make_control_app"]
