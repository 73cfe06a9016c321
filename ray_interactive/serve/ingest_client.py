"""Post Arrow rows to a run's HTTP ingest endpoint from any process: no Ray needed.

Only the standard library, pyarrow and tenacity (via :mod:`ray_interactive.core.retry`);
importing this module does not import Ray, so a deployed app (a web service, a labelling
tool, a batch job on another network) can feed a run without being a Ray driver::

    from ray_interactive.serve.ingest_client import post_table
    ack = post_table("http://10.0.0.5:8123", "live", table, token=os.environ["RI_INGEST_TOKEN"])
    ack["first"], ack["last"]      # the rows' sequence numbers in the source

Each call carries a ``batch_id`` (a fresh one if not given) and is retried on connection
errors and 5xx answers: the buffer acknowledges a repeated ``batch_id`` with the same rows
with the first answer (``duplicate: true``) instead of storing the rows again (other rows
under a used ``batch_id`` are refused), so a retry after a lost
answer stores the rows once (waits between attempts: 0.2 s doubling up to 2 s, with jitter;
each retry is logged). A 4xx answer (bad token, bad body) is not retried: it raises
:class:`IngestRejected` with the server's message.
"""

from __future__ import annotations

import http.client
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pyarrow as pa

from ray_interactive.core.plain import shown
from ray_interactive.core.retry import call_with_retry

#: The media type of an Arrow IPC stream (what the endpoint expects).
ARROW_STREAM = "application/vnd.apache.arrow.stream"

log = logging.getLogger(__name__)


class IngestRejected(Exception):
    """The server refused the request (4xx): bad or missing token, bad body, unknown source."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class IngestUnavailable(ConnectionError):
    """No answer after the retries: connection errors or 5xx (``status`` is None without one)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def check_ingest_args(table: Any, source: Any, batch_id: Any = None, call: str = "ingest") -> None:
    """Refuse, before anything is sent, arguments an ingest cannot take (``TypeError``
    saying what was given and what is taken): a dict or a DataFrame of rows, an object
    that could not even be serialised, a source or batch_id that is not text."""
    if not isinstance(table, (pa.Table, pa.RecordBatch)):
        raise TypeError(
            f"{call} takes the rows as a pyarrow Table or RecordBatch, not a {type(table).__name__}; make one with "
            "pa.table({column: values}), pa.Table.from_pylist(rows) or pa.Table.from_pandas(df)"
        )
    if not isinstance(source, str):
        raise TypeError(f"{call}: source must be a source's name (text), not {shown(source)}")
    if batch_id is not None and not isinstance(batch_id, str):
        raise TypeError(f"{call}: batch_id must be text (1-128 letters, digits, '.', '_', ':' or '-'), not {shown(batch_id)}")


def to_ipc_stream(table: pa.Table | pa.RecordBatch) -> bytes:
    """``table`` as the bytes of an Arrow IPC stream (the endpoint's body format)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write(table)
    return sink.getvalue().to_pybytes()


def post_table(
    url: str,
    source: str,
    table: pa.Table | pa.RecordBatch,
    token: str,
    batch_id: str | None = None,
    timeout: float = 10.0,
    retries: int = 3,
) -> dict[str, Any]:
    """Add ``table``'s rows to ``source`` of the run served at ``url``; returns the ack.

    ``url`` is the server's base address (``ingest_url`` in the run dir, or where the app
    is mounted). The ack is ``{"source", "rows", "first", "last", "batch_id", "duplicate"}``.
    """
    check_ingest_args(table, source, batch_id, "post_table")
    batch_id = batch_id or uuid.uuid4().hex
    query = urllib.parse.urlencode({"batch_id": batch_id})
    endpoint = f"{url.rstrip('/')}/v1/sources/{urllib.parse.quote(source, safe='')}/ingest?{query}"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": ARROW_STREAM}
    return _request("POST", endpoint, headers, to_ipc_stream(table), timeout, retries)


def list_sources(url: str, token: str, timeout: float = 10.0, retries: int = 3) -> dict[str, Any]:
    """The run's sources: ``{name: {"rows", "weight", "policy", "live", "schema", ...}}``."""
    return _request("GET", f"{url.rstrip('/')}/v1/sources", {"Authorization": f"Bearer {token}"}, None, timeout, retries)


class _Unanswered(Exception):
    """One attempt without an answer (connection error or 5xx): retried."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def _request(
    method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float, retries: int
) -> dict[str, Any]:
    def once() -> dict[str, Any]:
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            if e.code < 500:
                raise IngestRejected(e.code, _error_message(e)) from None
            raise _Unanswered(_error_message(e), e.code) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            # connection refused/reset, timeouts, a dropped connection: the request may or
            # may not have been applied; the same batch_id makes the retry safe
            raise _Unanswered(str(getattr(e, "reason", None) or e), None) from None

    attempts = max(1, retries + 1)
    try:
        return call_with_retry(once, f"{method} {url.split('?')[0]}", attempts=attempts, on=_Unanswered,
                               base_delay=0.2, max_delay=2.0, logger=log)
    except _Unanswered as e:
        raise IngestUnavailable(f"{method} {url.split('?')[0]} failed after {attempts} attempt(s): {e.message}",
                                e.status) from None


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read().decode("utf-8", "replace")
    except OSError:
        return e.reason or ""
    try:
        doc = json.loads(text)
    except ValueError:
        return text[:500] or str(e.reason)
    if isinstance(doc, dict):
        return str(doc.get("error") or doc.get("detail") or doc)
    return text[:500]
