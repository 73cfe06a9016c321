"""Ingest over HTTP, against a real run: the uvicorn server in its actor, real requests.

Accepted with the token (rows arrive, the ack's range is right), refused without it, bad
bodies rejected with nothing stored, a retried batch_id stored once, the client helper
from a process that never imports Ray, and the app mounted inside another app.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from fastapi import FastAPI

import ray_interactive as ri
from ray_interactive.cli import CLIError, parse_host_port
from ray_interactive.core.task import DataSource
from ray_interactive.data.buffer import DataBuffer
from ray_interactive.examples.regression import make_table
from ray_interactive.runtime.client import RunClient
from ray_interactive.runtime.ingest_server import ingest_app, start_ingest_server
from ray_interactive.runtime.launch import RunHandle, start_run
from ray_interactive.serve.ingest_client import IngestRejected, list_sources, post_table, to_ipc_stream
from ray_interactive.serve.ingest_http import make_ingest_app, serve_in_thread

from .conftest import REPO, assert_plain, regression_config, wait_until

LIMIT = 256 * 1024  # max_body_mb=0.25
STREAM = {"Content-Type": "application/vnd.apache.arrow.stream"}


@dataclass
class Served:
    handle: RunHandle
    client: RunClient
    url: str
    token: str

    def auth(self, **headers: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **STREAM, **headers}

    def rows(self, source: str = "live") -> int:
        return self.client.sources()[source]["rows"]


@pytest.fixture(scope="module")
def served(ray_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    config = regression_config(
        tmp_path_factory.mktemp("http"),
        task_kwargs={"live_source": True},
        start_paused=True,  # the buffer is what is tested; no training needed
        http_ingest={"max_body_mb": LIMIT / 2**20},
    )
    handle = start_run(config)
    try:
        assert handle.ingest_url is not None
        token = (handle.config.resolved_run_dir / "ingest_token").read_text()
        yield Served(handle, handle.client(), handle.ingest_url, token)
    finally:
        handle.shutdown()


def rows(n: int, seed: int = 0) -> pa.Table:
    return make_table(n, 32, seed)


def ingest_url(served: Served, source: str = "live") -> str:
    return f"{served.url}/v1/sources/{source}/ingest"


def test_accepted_with_the_token(served: Served) -> None:
    run_dir = served.handle.config.resolved_run_dir
    assert stat.S_IMODE((run_dir / "ingest_token").stat().st_mode) == 0o600
    assert (run_dir / "ingest_url").read_text().strip() == served.url
    assert served.url.startswith("http://127.0.0.1:")

    before = served.rows()
    r = httpx.post(ingest_url(served), content=to_ipc_stream(rows(10)), headers=served.auth())
    assert r.status_code == 200, r.text
    ack = r.json()
    assert (ack["source"], ack["rows"], ack["first"], ack["last"]) == ("live", 10, before, before + 9)
    assert ack["duplicate"] is False and len(ack["batch_id"]) == 32  # one made per request
    assert served.rows() == before + 10

    # a RecordBatch with the columns in another order and y as float64 (a safe cast) fits too
    t = rows(3, seed=1)
    batch = pa.record_batch([t["y"].combine_chunks().cast("float64"), t["x"].combine_chunks()], names=["y", "x"])
    r = httpx.post(ingest_url(served), content=to_ipc_stream(batch), headers=served.auth())
    assert r.status_code == 200, r.text
    assert (r.json()["first"], r.json()["last"]) == (before + 10, before + 12)

    r = httpx.get(f"{served.url}/v1/sources", headers=served.auth())
    assert r.status_code == 200 and r.json()["live"]["rows"] == before + 13 and r.json()["live"]["live"] is True
    assert httpx.get(f"{served.url}/healthz").json() == {"ok": True}  # the one route without the token


def test_refused_without_the_token_or_with_a_wrong_one(served: Served) -> None:
    before = served.rows()
    body = to_ipc_stream(rows(5))
    r = httpx.post(ingest_url(served), content=body, headers=STREAM)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "missing token" in r.json()["error"]
    for header in (f"Bearer {served.token}x", "Bearer", f"Basic {served.token}", served.token, "Bearer é".encode()):
        r = httpx.post(ingest_url(served), content=body, headers={**STREAM, "Authorization": header})
        assert r.status_code == 401 and r.json() == {"error": "invalid token"}, header
    assert httpx.get(f"{served.url}/v1/sources").status_code == 401
    with pytest.raises(IngestRejected) as e:
        post_table(served.url, "live", rows(5), token="wrong-token-of-some-length")
    assert e.value.status == 401
    assert served.rows() == before


def test_bad_bodies_are_rejected_and_nothing_is_stored(served: Served) -> None:
    good = rows(4)
    bad_type = good.set_column(1, "y", pa.array(["a"] * 4))
    missing = good.drop_columns(["y"])
    schema_only = pa.BufferOutputStream()
    pa.ipc.new_stream(schema_only, good.schema).close()
    zero_rows = pa.BufferOutputStream()
    with pa.ipc.new_stream(zero_rows, good.schema) as w:
        w.write_batch(good.to_batches()[0].slice(0, 0))
    ipc_file = pa.BufferOutputStream()
    with pa.ipc.new_file(ipc_file, good.schema) as w:
        w.write(good)
    body = to_ipc_stream(good)

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds on what is read
        for _ in range(LIMIT // 16384 + 2):
            yield b"\0" * 16384

    cases: list[tuple[str, dict[str, Any], int, str]] = [
        ("garbage", {"content": b"this is not arrow at all"}, 400, "not a valid Arrow IPC stream"),
        ("truncated", {"content": body[: len(body) // 2]}, 400, "not a valid Arrow IPC stream"),
        ("empty", {"content": b""}, 400, "empty body"),
        ("no batches", {"content": schema_only.getvalue().to_pybytes()}, 400, "holds no record batch"),
        ("no rows", {"content": zero_rows.getvalue().to_pybytes()}, 400, "holds no rows"),
        ("ipc file", {"content": ipc_file.getvalue().to_pybytes()}, 400, "IPC file; send the IPC stream"),
        ("wrong type", {"content": to_ipc_stream(bad_type)}, 400, "column 'y' has type string"),
        ("missing column", {"content": to_ipc_stream(missing)}, 400, "missing column(s) y"),
        ("unknown source", {"content": body, "url": ingest_url(served, "nope")}, 404, "unknown source 'nope'"),
        ("static source", {"content": body, "url": ingest_url(served, "base")}, 400, "static"),
        ("too large", {"content": b"\0" * (LIMIT + 1)}, 413, f"over the limit of {LIMIT} bytes"),
        ("too large, chunked", {"content": chunked()}, 413, f"over the limit of {LIMIT} bytes"),
        ("way too large", {"content": b"\0" * (3 * LIMIT)}, 413, f"over the limit of {LIMIT} bytes"),
        ("bad batch_id", {"content": body, "params": {"batch_id": "../../etc"}}, 400, "batch_id must be"),
        ("long batch_id", {"content": body, "params": {"batch_id": "a" * 129}}, 400, "batch_id must be"),
        ("json", {"content": b"{}", "headers": {"Content-Type": "application/json"}}, 415, "send the rows as"),
    ]
    before = {name: s["rows"] for name, s in served.client.sources().items()}
    for what, kw, status, message in cases:
        url = kw.pop("url", ingest_url(served))
        try:
            r = httpx.post(url, headers={**served.auth(), **kw.pop("headers", {})}, timeout=30, **kw)
        except httpx.TransportError as e:
            # a body far over the limit may be cut off before the answer is read
            assert what == "way too large", f"{what}: {e!r}"
            continue
        assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
        assert message in r.json()["error"], f"{what}: {r.json()}"
    assert {name: s["rows"] for name, s in served.client.sources().items()} == before


def cut_at_a_batch_boundary(table: pa.Table) -> bytes:
    """The first half of a two-batch IPC stream, cut off before the second batch and the end
    marker: what a client killed half way through an upload sends. It reads like a
    complete, shorter stream."""
    sink = pa.BufferOutputStream()
    writer = pa.ipc.new_stream(sink, table.schema)
    writer.write_batch(table.slice(0, table.num_rows // 2).combine_chunks().to_batches()[0])
    return sink.getvalue().to_pybytes()  # the writer never got to its second batch and close()


def test_strange_tables_and_requests_get_a_reason_in_the_documented_form(served: Served) -> None:
    good = rows(6)
    dupes = pa.table([good.column("x"), good.column("y"), good.column("y")], names=["x", "y", "y"])
    nan_y = good.set_column(1, "y", pa.array([0.0, 1.0, float("nan"), 0.0, 0.0, 0.0], pa.float32()))
    overflow = good.set_column(1, "y", pa.array([0.0, 1e39, 0.0, 0.0, 0.0, 0.0], pa.float64()))
    booleans = good.set_column(1, "y", pa.array([True, False] * 3))
    before = served.rows()
    cases = [
        ("duplicate columns", to_ipc_stream(dupes), 400, "duplicate column name(s) 'y'"),
        ("cut off at a batch boundary", cut_at_a_batch_boundary(good), 400, "no end-of-stream marker: it was cut off"),
        ("NaN", to_ipc_stream(nan_y), 400, "column 'y', row 2 holds nan"),
        ("overflowing cast", to_ipc_stream(overflow), 400, "the value 1e+39 in row 1 does not fit"),
        ("a boolean is not a float", to_ipc_stream(booleans), 400, "column 'y' has type bool, expected float"),
    ]
    for what, body, status, message in cases:
        r = httpx.post(ingest_url(served), content=body, headers=served.auth(), timeout=30)
        assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
        assert message in r.json()["error"], f"{what}: {r.json()}"
    assert served.rows() == before  # a cut-off stream is refused whole: not even its first batch
    # Every refusal, malformed requests and unknown routes included, is {"error": ...}.
    for method, path, status, message in [
        ("GET", "/nope", 404, "no route GET /nope; routes: POST /v1/sources/{source}/ingest"),
        ("DELETE", "/v1/sources", 405, "DELETE is not allowed on /v1/sources"),
        ("GET", "/v1/sources/live/ingest", 405, "GET is not allowed"),
        ("POST", "/v1/sources/live/ingest?batch_id=%ZZ", 400, "batch_id must be"),
    ]:
        r = httpx.request(method, served.url + path, headers=served.auth(), timeout=30)
        assert r.status_code == status, f"{method} {path}: {r.status_code} {r.text}"
        assert r.headers["content-type"].startswith("application/json") and message in r.json()["error"], r.text
    # Ray itself cannot carry a table with duplicate names: the client says so first.
    with pytest.raises(ValueError, match="duplicate column name"):
        served.client.ingest(dupes, "live")


def test_a_retried_batch_id_is_acknowledged_as_a_duplicate_and_stored_once_and_other_rows_under_it_refused(
    served: Served,
) -> None:
    before = served.rows()
    body = to_ipc_stream(rows(7, seed=2))
    first = httpx.post(ingest_url(served), content=body, params={"batch_id": "app-1:batch.7"}, headers=served.auth())
    again = httpx.post(ingest_url(served), content=body, params={"batch_id": "app-1:batch.7"}, headers=served.auth())
    assert first.status_code == again.status_code == 200, again.text
    a, b = first.json(), again.json()
    assert (a["duplicate"], b["duplicate"]) == (False, True)
    assert (b["batch_id"], b["first"], b["last"], b["rows"]) == ("app-1:batch.7", a["first"], a["last"], 7)
    ack = post_table(served.url, "live", rows(7, seed=2), served.token, batch_id="app-1:batch.7")
    assert ack["duplicate"] is True
    other = httpx.post(ingest_url(served), content=to_ipc_stream(rows(7, seed=3)), params={"batch_id": "app-1:batch.7"},
                       headers=served.auth())
    assert other.status_code == 400 and "was already used for different rows" in other.json()["error"], other.text
    assert served.rows() == before + 7


CLIENT_SCRIPT = """
import json, os, sys
import numpy as np
import pyarrow as pa
from ray_interactive.serve.ingest_client import IngestRejected, list_sources, post_table

x = np.random.default_rng(0).standard_normal((20, 32), dtype=np.float32)
table = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 32),
                  "y": pa.array(np.zeros(20, dtype=np.float32))})
url, token = os.environ["INGEST_URL"], os.environ["INGEST_TOKEN"]
ack = post_table(url, "live", table, token)
try:
    post_table(url, "live", table.drop_columns(["y"]), token)
except IngestRejected as e:
    refused = [e.status, e.message]
rows = list_sources(url, token)["live"]["rows"]
print(json.dumps({"ack": ack, "refused": refused, "rows": rows,
                  "imported": sorted(m for m in ("ray", "torch", "fastapi") if m in sys.modules)}))
"""


def test_post_table_from_a_process_that_does_not_import_ray(served: Served) -> None:
    before = served.rows()
    env = {**os.environ, "INGEST_URL": served.url, "INGEST_TOKEN": served.token}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT], capture_output=True, text=True, timeout=60, env=env, cwd=REPO
    )
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout.splitlines()[-1])
    assert doc["imported"] == []  # not Ray, not torch, not the server
    assert (doc["ack"]["rows"], doc["ack"]["first"], doc["ack"]["duplicate"]) == (20, before, False)
    assert doc["refused"][0] == 400 and "missing column(s) y" in doc["refused"][1]
    assert doc["rows"] == before + 20 == served.rows()


def test_the_app_mounts_in_another_fastapi_app(served: Served) -> None:
    outer = FastAPI()

    @outer.get("/")
    def home() -> dict[str, str]:
        return {"app": "mine"}

    token = "another-token-for-the-mounted-app"
    outer.mount("/ingest", ingest_app(served.handle.buffer, token))
    server = serve_in_thread(outer)
    try:
        before = served.rows()
        assert httpx.get(server.url).json() == {"app": "mine"}
        ack = post_table(f"{server.url}/ingest", "live", rows(6), token)
        assert (ack["first"], ack["last"]) == (before, before + 5)
        assert list_sources(f"{server.url}/ingest", token)["live"]["rows"] == before + 6
        with pytest.raises(IngestRejected):  # the run's own server has its own token
            post_table(f"{server.url}/ingest", "live", rows(6), served.token)
    finally:
        server.stop()
    with pytest.raises(ValueError, match="at least 16 characters"):
        ingest_app(served.handle.buffer, "short")


def test_cli_finds_the_url_and_a_second_server_is_refused(served: Served, ray_cluster: dict[str, Any]) -> None:
    cli = str(Path(sys.executable).parent / "ray-interactive")
    name = served.handle.config.name
    out = subprocess.run(
        [cli, "--address", ray_cluster["address"], "ingest-url", name, "--json"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout)
    assert info["url"] == served.url
    assert info["token_file"] == str(served.handle.config.resolved_run_dir / "ingest_token")
    with pytest.raises(ValueError, match="already serves HTTP ingest"):
        start_ingest_server(name)
    assert parse_host_port("8123") == {"port": 8123}
    assert parse_host_port("0.0.0.0:0") == {"host": "0.0.0.0", "port": 0}
    assert parse_host_port("[::1]:80") == {"host": "::1", "port": 80}
    with pytest.raises(CLIError):
        parse_host_port("host:")


def _raw(port: int, request: bytes, timeout: float = 20.0) -> tuple[int, dict[str, Any]]:
    """Send bytes as they are (no client library would send these); the status and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), answer
    return int(head.split()[1]), json.loads(body[: _length(answer)])


def _length(answer: bytes) -> int:
    found = re.search(rb"content-length: *(\d+)", answer, re.I)
    return int(found.group(1)) if found else 1 << 30


def test_malformed_http_gets_a_json_400_saying_what_is_wrong_and_what_is_expected(tmp_path: Path) -> None:
    """uvicorn answers a request it cannot parse before the app runs, with a plain-text
    "Invalid HTTP request received."; a Content-Length larger than the body used to leave
    the request hanging. The endpoint's own server (a plain DataBuffer behind it, no Ray)
    answers both in its documented form."""
    token = "t" * 32
    buffer = DataBuffer([DataSource("live", schema=pa.schema([pa.field("y", pa.float32())]))])
    server = serve_in_thread(make_ingest_app(buffer, token, body_idle_s=0.5))
    body = to_ipc_stream(pa.table({"y": pa.array([1.0, 2.0], pa.float32())}))
    head = (f"POST /v1/sources/live/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/vnd.apache.arrow.stream\r\n")
    try:
        cases = [
            ("Content-Length: abc", body, "its Content-Length header is not a number of bytes"),
            ("Content-Length: -5", body, "its Content-Length header is not a number of bytes"),
            ("Content-Length: 9, 10", body, "it has Content-Length headers that disagree"),
            (f"Content-Length: {len(body) + 50}", body, f"the request's Content-Length ({len(body) + 50}) does not "
             f"match its body: no byte came for 0.5 s after {len(body)} bytes"),
            ("Transfer-Encoding: gzip", body, "its Transfer-Encoding is not 'chunked'"),
        ]
        for header, sent, message in cases:
            status, doc = _raw(server.port, f"{head}{header}\r\n\r\n".encode() + sent)
            assert status == 400 and message in assert_plain(doc["error"]), (header, doc)
        status, doc = _raw(server.port, b"HELLO\r\n\r\n")
        assert status == 400 and "its first line is not 'METHOD /path HTTP/1.1'" in doc["error"], doc
        assert "send POST /v1/sources/{source}/ingest with 'Authorization: Bearer <token>'" in doc["error"]
        assert buffer.sources()["live"]["rows"] == 0
        # and the well-formed request still works on the same server
        status, doc = _raw(server.port, f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        assert status == 200 and doc["rows"] == 2, doc
    finally:
        server.stop()


def test_the_package_exports_resolve_lazily() -> None:
    for name in ri.__all__:
        assert getattr(ri, name) is not None, name


def test_a_restarted_buffer_is_waited_for(served: Served) -> None:
    """Ray restarts a dead buffer; a request meanwhile is retried (same batch_id) and lands once.
    Last in this module: it kills the run's buffer process."""
    import ray

    before = served.rows()
    pid = ray.get(served.handle.buffer.pid.remote())
    ray.kill(served.handle.buffer, no_restart=False)
    ack = post_table(served.url, "live", rows(5, seed=3), served.token, timeout=60)
    assert (ack["rows"], ack["first"], ack["duplicate"]) == (5, before, False)

    def settled() -> Any:  # this process's handle may see the restart a call late
        try:
            return ray.get(served.handle.buffer.pid.remote()), served.rows()
        except ray.exceptions.RayActorError:
            return None

    new_pid, after = wait_until(settled, timeout=30, what="the buffer to answer this process")
    assert new_pid != pid
    assert after == before + 5  # the rows acknowledged before the crash are back too
