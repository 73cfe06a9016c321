"""Shared fixtures: one real local Ray cluster per test session, runs in tmp dirs."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Ray starts its workers at nice 15: on a busy machine (CI) any other process would starve
# the test runs' actors. The test cluster's workers run at the normal priority instead.
os.environ.setdefault("RAY_worker_niceness", "0")
# A shell starts a background job (`make test &`, a CI step) with Ctrl-C ignored, and that
# is inherited: the tests' Ctrl-C to a CLI agent would go unheard. A Python handler is
# reset to the default on exec, so every process the tests start hears Ctrl-C again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402
import ray  # noqa: E402

from ray_interactive.core.config import RunConfig, TaskSpec  # noqa: E402
from ray_interactive.runtime.launch import RunHandle, start_run  # noqa: E402

try:  # CI and users run on busy machines: no browser check gives up after Playwright's default 5 s
    from playwright.sync_api import expect as _expect

    _expect.set_options(timeout=60_000)
except ImportError:
    pass

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RI_SHARED_DATA", REPO.parent / "shared" / "data"))
REGRESSION = "ray_interactive.examples.regression:RegressionTask"
#: Each step of a test run takes at least this long: unpaced, the toy regression model trains
#: ~900 steps a second and its run takes 1.3 of the machine's 2 cores all the time it lives.
PACE_S = 0.004


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Markers people can select by (``make test-fast`` runs ``not ray and not browser and not
    slow``): ``ray`` on every test that uses the session's Ray cluster (a fixture that needs
    it, directly or not); a ``browser`` test is skipped where Chromium is missing."""
    no_browser = pytest.mark.skip(reason="needs Debian's chromium (.ci/run and make test install it)")
    for item in items:
        if "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
        if item.get_closest_marker("browser") is not None and not Path(CHROMIUM).exists():
            item.add_marker(no_browser)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[dict[str, Any]]:
    """A local Ray cluster for the whole session (starting one takes seconds)."""
    # More logical CPUs than cores: several small runs share 2 real cores in tests.
    # With the dashboard: its job server is what `ray job submit` talks to (tests/test_cluster.py).
    ctx = ray.init(num_cpus=8, include_dashboard=True, namespace="ray_interactive", log_to_driver=False)
    yield {"address": ctx.address_info["gcs_address"], "jobs": f"http://{ctx.dashboard_url}"}
    ray.shutdown()


def regression_config(tmp_path: Path, **overrides: Any) -> RunConfig:
    task_kwargs = {"pace_s": PACE_S, **overrides.pop("task_kwargs", {})}
    doc: dict[str, Any] = {
        "name": f"t-{uuid.uuid4().hex[:8]}",
        "task": TaskSpec(target=overrides.pop("target", REGRESSION), kwargs=task_kwargs),
        "run_dir": tmp_path / "run",
        "batch_size": 16,
        "lr": 1e-3,
        "torch_threads": 1,
        "trainer_num_cpus": 1,
        "metrics_interval_s": 0.1,
        "metrics_flush_s": 0.5,
    }
    doc.update(overrides)
    return RunConfig(**doc)


@pytest.fixture
def start(ray_cluster: dict[str, Any]) -> Iterator[Callable[..., RunHandle]]:
    """Start runs that are shut down when the test ends."""
    handles: list[RunHandle] = []

    def _start(config: RunConfig, **kwargs: Any) -> RunHandle:
        handle = start_run(config, **kwargs)
        handles.append(handle)
        return handle

    yield _start
    for h in handles:
        h.shutdown()


def snapshot_of(model: Any, optimizer: Any, **fields: Any) -> Any:
    """A trainer snapshot (the typed message) of a model and optimizer, as a trainer at step 0 sends it."""
    from ray_interactive.core.hparams import describe_optimizer
    from ray_interactive.core.messages import Snapshot
    from ray_interactive.core.modules import describe_modules

    doc: dict[str, Any] = {
        "groups": describe_optimizer(optimizer), "modules": describe_modules(model),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "has_eval": True,
        "step": 0, "branch": "main", "schedule": {"kind": "constant"}, "grad_clip": None, "grad_accumulation": 1,
        "paused": False, "mixture": {"base": 1.0}, "frontend": "trainer",
    }
    return Snapshot.model_validate({**doc, **fields})


class _KeepingPort:
    """A controller port that keeps what it is sent."""

    def __init__(self, sent: list[Any]) -> None:
        self.sent = sent

    def progress(self, report: Any) -> None:
        self.sent.append(report)

    def outcomes(self, report: Any) -> None:
        self.sent.append(report)

    def describe(self, snapshot: Any) -> None:
        self.sent.append(snapshot)


class Trace:
    """A reporter whose port numbers each report it is sent and whose wait notes the
    numbers it waited for, in one list: a test reads what left, and what was answered, when."""

    def __init__(self) -> None:
        from ray_interactive.core.reporting import Reporter

        self.events: list[tuple[str, Any]] = []  # ("sent", report) or ("waited", {numbers})
        trace = self

        class Port:
            def _send(self, report: Any) -> int:
                trace.events.append(("sent", report))
                return len(trace.events)  # the report's number: its place in ``events``, from 1

            progress = outcomes = describe = _send

        self.reporter = Reporter(Port(), lambda replies: self.events.append(("waited", set(replies))))

    def sent(self, kind: type) -> list[tuple[int, Any]]:
        """(number, report) of every report of ``kind`` sent, in order."""
        return [(i, r) for i, (what, r) in enumerate(self.events, 1) if what == "sent" and isinstance(r, kind)]

    def waited_for(self, number: int) -> bool:
        """Whether the report numbered ``number`` was waited for right after it was sent."""
        return number < len(self.events) and self.events[number][0] == "waited" and number in self.events[number][1]


class Recorder:
    """A reporter whose port keeps the typed messages a loop sends (a controller stand-in
    for unit tests of the loop side; the real controller is tested on its own)."""

    def __init__(self) -> None:
        from ray_interactive.core.reporting import Reporter

        self.sent: list[Any] = []
        self.reporter = Reporter(_KeepingPort(self.sent))

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.sent if isinstance(m, kind)]

    def outcome_records(self) -> list[Any]:
        """Every command outcome reported, in order."""
        from ray_interactive.core.messages import Outcomes

        return [r for m in self.of(Outcomes) for r in m.records]

    def all_events(self) -> list[Any]:
        """Every event that rode along with a report, in order."""
        from ray_interactive.core.messages import Outcomes, Progress

        return [e for m in self.sent if isinstance(m, (Progress, Outcomes)) for e in m.events]

    def run_events(self) -> list[Any]:
        """The events the run made on its own (a health pause, say)."""
        from ray_interactive.core.messages import RunEvent

        return [e for e in self.all_events() if isinstance(e, RunEvent)]

    def rows(self) -> list[tuple[int, float, dict[str, float]]]:
        """Every metric row reported, in order."""
        from ray_interactive.core.messages import Progress

        return [r for m in self.of(Progress) for r in m.rows]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "condition",
               state: Callable[[], Any] | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy; on a timeout, say what
    ``state()`` shows (the run's status, say): a failure under load names its cause."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    shown = ""
    if state is not None:
        try:
            shown = f"; state then: {state()!r}"[:12000]
        except Exception as e:  # noqa: BLE001 - the diagnosis must not hide the timeout
            shown = f"; state unavailable ({type(e).__name__}: {e})"
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{shown}")


def py_stacks(*pids: int) -> str:
    """The Python stacks of these processes (py-spy), for a timeout's diagnosis: where a
    hung actor waits."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = []
    for pid in pids:
        try:
            done = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
            out.append(f"--- pid {pid}:\n{done.stdout or done.stderr}")
        except Exception as e:  # noqa: BLE001 - a diagnosis only
            out.append(f"--- pid {pid}: no stacks ({type(e).__name__}: {e})")
    return "\n".join(out)


#: What a message a person reads must not show: a traceback, a library's own wording
#: (pydantic's union members and "Input should ...", Python's enum error, Ray's wrappers).
INTERNALS = re.compile(
    r"Traceback|pydantic|errors\.pydantic\.dev|Input should|Value error,|value\.(float|int|bool)|"
    r"is not a valid [A-Z]\w+|RayTaskError|Could not serialize|surrogates not allowed|Invalid HTTP request received"
)


def assert_plain(message: str | None, limit: int = 600) -> str:
    """``message`` names a problem in a short sentence of ours: no internals, not empty, not long."""
    assert message, "no message"
    assert len(message) <= limit, f"{len(message)} characters: {message[:300]}..."
    found = INTERNALS.search(message)
    assert found is None, f"{found.group(0)!r} in: {message}"
    return message


def running_client(handle: RunHandle) -> Any:
    """A client of ``handle``'s run, resumed first if an earlier test left it paused."""
    c = handle.client()
    if c.status()["status"] == "paused":
        c.wait(c.send("resume"))
    return c


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real filesystem of ``size`` (a tmpfs) mounted at ``where``, to fill up; skips the
    test where mounting is not allowed (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)



CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def ui_page(url: str, auth: tuple[str, str] | None = None) -> Iterator[Any]:
    """Debian's headless Chromium on a control UI at ``url``, logged in with ``auth`` if given
    (a tall viewport, and Playwright waits of 60 s: CI machines are busy)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(60_000)
            page.goto(url)
            if auth is not None:
                page.get_by_label("Username").fill(auth[0])
                page.get_by_label("Password").fill(auth[1])
                page.get_by_role("button", name="Login").click()
            yield page
        finally:
            browser.close()
