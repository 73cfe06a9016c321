"""The runnable apps in ``apps/``: each file holds a ``demo`` and serves it when run, as a
Gradio user expects (``python apps/<name>.py``; ``gradio apps/<name>.py`` reloads it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ray_interactive.core.commands import SaveCheckpoint
from ray_interactive.core.config import RunConfig
from ray_interactive.core.controller import Controller
from ray_interactive.core.messages import Progress, TrainerStatus

from .conftest import REPO

pytestmark = pytest.mark.slow  # each starts a Python process that imports Gradio (and torch)


@contextmanager
def served(args: list[str], env: dict[str, str] | None = None, timeout: float = 180.0) -> Iterator[str]:
    """Run an app file; yield the URL it prints once it serves; stop it after."""
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, **(env or {})})
    try:
        deadline, seen = time.monotonic() + timeout, []
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            seen.append(line)
            if m := re.search(r"(http://127\.0\.0\.1:\d+)", line):
                yield m.group(1)
                return
        pytest.fail(f"{args[0]} did not serve within {timeout} s:\n{''.join(seen)[-3000:]}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def finished_run(tmp_path: Path) -> Path:
    """A small finished run directory, written by the controller's own plain class."""
    config = RunConfig(name="app-run", run_dir=tmp_path / "run")
    c = Controller(config)
    c.trainer_progress(Progress(branch="main", status=TrainerStatus(status="stopped", step=30, branch="main", time=1.0),
                                rows=[(k, float(k), {"loss": 3.0 / k, "lr": 1e-3}) for k in range(1, 31)]))
    c.refuse({"kind": "fly"}, "unknown command kind 'fly'")
    assert c.submit(SaveCheckpoint(tag="t")).status.value == "rejected"  # the run has stopped
    c.close()
    return config.resolved_run_dir


def test_the_control_ui_app_serves_a_run_given_by_its_directory(tmp_path: Path) -> None:
    from gradio_client import Client

    run_dir = finished_run(tmp_path)
    with served(["apps/control_ui.py"], {"RI_RUN": str(run_dir)}) as url:
        assert "ray_interactive" in httpx.get(url, timeout=60).text
        out = Client(url, verbose=False).predict("step", 0.0, False, None, None, None, "update_ratio", None,
                                                 api_name="/refresh")
        assert "app-run" in out[0] or "STOPPED" in out[0].upper()
        assert "fly" in str(out[11])  # the command history, read from commands.jsonl


def test_the_neuralos_demo_app_serves_the_base_model_alone() -> None:
    from gradio_client import Client

    with served(["apps/neuralos_demo.py"]) as url:
        gc = Client(url, verbose=False)
        info = gc.predict(api_name="/info")
        assert info["version"] == 0  # the base model: no run behind it
        s = gc.predict("", 1, api_name="/new_session")
        frame = gc.predict(s["session"], 10, 10, "left_click", "", 0, "", api_name="/act")
        assert frame["step"] == 1 and frame["frame_png"]


def test_the_chat_app_answers_names_the_version_and_takes_feedback_alone() -> None:
    from gradio_client import Client

    with served(["apps/chat_demo.py"], {"RI_CHAT_MODEL": "tiny"}) as url:
        gc = Client(url, verbose=False)
        ex = gc.predict("How heavy is the Orbit Q3?", api_name="/ask")
        assert ex["version"] == 0 and ex["prompt"] == "How heavy is the Orbit Q3?" and isinstance(ex["answer"], str)
        judged = gc.predict(ex["id"], "The Orbit Q3 weighs 3.8 kilograms.", api_name="/correct")
        assert judged["feedback"] == "wrong" and judged["correction"] == "The Orbit Q3 weighs 3.8 kilograms."
        assert gc.predict(ex["id"], api_name="/approve")["feedback"] == "approved"
        info = gc.predict(api_name="/info")
        assert info["answered"] == 1 and info["corrected"] == 1 and info["logged_rows"] == 0  # no run: nothing logged
        for bad, api, match in [((" ",), "/ask", "a question must be a non-empty text"),
                                (("nope", "x"), "/correct", "no exchange 'nope'"),
                                ((ex["id"], "x" * 2001), "/correct", "at most 2000")]:
            with pytest.raises(Exception, match=match):
                gc.predict(*bad, api_name=api)


@pytest.mark.browser
def test_a_person_asks_and_corrects_in_the_chat_in_a_real_browser() -> None:
    from playwright.sync_api import expect

    from .conftest import ui_page

    with served(["apps/chat_demo.py"], {"RI_CHAT_MODEL": "tiny"}) as url, ui_page(url) as page:
        page.locator("#question textarea").fill("What colours does the Orbit Q3 come in?")
        page.locator("#ask").click()
        chat = page.locator("#chat")
        expect(chat).to_contain_text("What colours does the Orbit Q3 come in?")
        expect(chat).to_contain_text("(version 0)")  # the answer names the version that drew it
        expect(page.locator("#version")).to_contain_text("serving adapter version 0")
        page.locator("#correct").click()  # no correction typed: refused, with why
        expect(page.get_by_text("a correction must be a non-empty text")).to_be_visible()
        page.locator("#correction textarea").fill("The Orbit Q3 comes in Graphite and Sandstone.")
        page.locator("#correct").click()
        expect(page.locator("#status")).to_contain_text("the correction is logged")
        expect(page.locator("#correction textarea")).to_have_value("")
        page.locator("#approve").click()
        expect(page.locator("#status")).to_contain_text("marked right")


def test_importing_an_app_builds_nothing() -> None:
    """``main`` and tests import the apps' builders; only running a file (or ``app.demo``) builds its demo."""
    import importlib

    for name in ("apps.neuralos_demo", "apps.control_ui", "apps.chat_demo"):
        assert "demo" not in vars(importlib.import_module(name)), name
