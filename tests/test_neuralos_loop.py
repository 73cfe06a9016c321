"""The NeuralOS loop end to end on the test cluster: a simulated user acts through the demo's HTTP
API -> interactions are logged in the buffer -> replayed into true transitions -> the trainer
trains on them -> it publishes weights -> the demo serves the new version. Plus the demo page in
headless Chromium, and the main command with a duration."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from gradio_client import Client

from neuralos_example.data import decode_png
from neuralos_example.main import Deployment
from neuralos_example.simulator import Action, Desktop, key_for_index
from neuralos_example.users import SimulatedUser
from ray_interactive.core.config import RunConfig, TaskSpec
from ray_interactive.runtime.launch import start_run

from .conftest import free_port, ui_page, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def loop(ray_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("neuralos") / "run"
    config = RunConfig(
        name=f"nos-{uuid.uuid4().hex[:6]}",
        task=TaskSpec(target="neuralos_example.task:NeuralOSTask", kwargs={"base_rows": 64, "eval_sessions": 1, "sampler_steps": 1}),
        run_dir=run_dir,
        batch_size=2,
        lr=1e-4,
        publish_every=3,
        torch_threads=1,
        trainer_num_cpus=1,
        metrics_interval_s=0.1,
        metrics_flush_s=0.5,
    )
    handle = start_run(config)
    client = handle.client()
    deployment = Deployment(client, run_dir, sampler_steps=1, replay_poll_s=0.05, replicas=2)  # on Ray Serve
    yield {"handle": handle, "client": client, "d": deployment, "run_dir": run_dir}
    deployment.close()
    handle.shutdown()


def test_user_actions_become_training_data_and_new_weights_reach_the_demo(loop: dict[str, Any]) -> None:
    client, d = loop["client"], loop["d"]
    version_before = wait_until(lambda: d.engine.version, timeout=60, what="a first published version")
    user = SimulatedUser(d.url, seed=5, think_s=(0.0, 0.01), tasks=("create_folder",), tasks_per_session=(1, 1))
    user.session()
    assert user.actions >= 5 and user.errors == 0

    # every action was logged as an interaction row, with the frame shown and the version served
    n = user.actions
    wait_until(lambda: client.sources()["interactions"]["rows"] >= n, timeout=90, what="interaction rows")
    # (logged by the replica that drew each frame: a session's steps may be stored out of order)
    rows = sorted(client.read_rows("interactions").to_pylist()[:n], key=lambda r: r["step"])
    assert [r["step"] for r in rows] == list(range(n))
    assert all(decode_png(r["frame"]).shape == (64, 64, 3) and r["model_version"] >= 1 and r["latency_ms"] > 0 for r in rows)
    assert rows[0]["task"] == "create_folder"
    def reported() -> list[dict[str, Any]] | None:
        alive = [r for r in client.replicas() if r["alive"] and r["version"] >= 1]
        return alive if sum(r["logged_rows"] for r in alive) >= n else None

    replicas = wait_until(reported, timeout=60, what="replicas reporting the version they serve and the rows they logged")
    assert sum(r["served"] for r in replicas) >= n
    assert len(client.replicas()) == 2

    # replayed in the simulator: the transitions are the true frames of those actions
    wait_until(lambda: client.sources()["live"]["rows"] >= n, timeout=90, what="replayed transitions")
    live = sorted(client.read_rows("live", 0, n).to_pylist(), key=lambda t: t["step"])
    desk = Desktop(64, rows[0]["seed"])
    for r, t in zip(rows, live, strict=True):
        prev = desk.render()
        nxt = desk.step(Action(r["x"], r["y"], r["event"], key_for_index(r["key_index"])))
        assert np.array_equal(decode_png(t["prev"]), prev) and np.array_equal(decode_png(t["next"]), nxt)
    assert desk.state.folders, "the scripted user created a folder"

    # the trainer drew them into batches (fresh first) and published newer weights, which the demo now serves
    wait_until(lambda: client.metrics(keys=["mix/live"]).get("mix/live", {}).get("value"), timeout=90, what="live rows in a batch")
    assert max(client.metrics(keys=["mix/live"])["mix/live"]["value"]) > 0
    firsts = ray.get(loop["handle"].trainer.first_use_latencies.remote())
    assert firsts, "the trainer trained on live rows (seconds from ingest to first gradient)"
    wait_until(lambda: d.engine.version > version_before + 1, timeout=90, what="the demo to serve a newer version")
    # the engine may take a newer version while /info is answered: bracket it
    low = d.engine.version
    info = Client(d.url, verbose=False).predict(api_name="/info")
    assert low <= info["version"] <= d.engine.version
    assert d.replayer.stats()["latency_p50_s"] is not None


def test_demo_api_refuses_bad_actions_and_keeps_serving(loop: dict[str, Any]) -> None:
    c = Client(loop["d"].url, verbose=False)
    s = c.predict("open_browser", None, api_name="/new_session")
    for args, msg in (
        (("nope", 1, 1, "move", "", 0), "unknown session"),
        ((s["session"], 99, 1, "left_click", "", 0), "outside"),
        ((s["session"], 1, 1, "double_click", "", 0), "unknown event"),
        ((s["session"], 1, 1, "key", "!", 0), "a KEY action"),
        ((s["session"], 1, 1, "move", "", 3), "sampler steps"),
    ):
        with pytest.raises(Exception, match=msg):
            c.predict(*args, api_name="/act")
    out = c.predict(s["session"], 10, 10, "left_click", "", 1, api_name="/act")
    assert out["step"] == 1


@pytest.mark.browser
def test_demo_page_click_on_the_screen_changes_the_frame(loop: dict[str, Any], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    d = loop["d"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(d.url)
        expect(page.locator("#version")).to_contain_text("model version", timeout=90_000)
        img = page.locator("#screen img")
        expect(img).to_be_visible(timeout=90_000)
        before = img.get_attribute("src")
        sessions = len(d.engine.sessions)
        box = img.bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.3)  # on the home icon
        expect(page.locator("#info")).to_contain_text("step 1", timeout=90_000)
        expect(img).not_to_have_attribute("src", before or "", timeout=60_000)
        assert len(d.engine.sessions) == sessions + 1
        page.locator("#type-text textarea, #type-text input").first.fill("ab")
        page.locator("#type").click()
        expect(page.locator("#info")).to_contain_text("step 3", timeout=90_000)
        page.screenshot(path=str(tmp_path / "demo.png"))
        browser.close()


def test_the_demo_refuses_other_addresses_without_a_login_and_asks_for_it_with_one(loop: dict[str, Any]) -> None:
    """The control UI's rule: loopback needs nothing; any other address needs a login."""
    import subprocess
    import sys

    import httpx

    from apps.neuralos_demo import serve_demo

    engine = loop["d"].engine
    with pytest.raises(ValueError, match="refusing to bind the NeuralOS demo to 0.0.0.0 without authentication"):
        serve_demo(engine, host="0.0.0.0")
    with pytest.raises(ValueError, match="at least 8 characters"):
        serve_demo(engine, host="0.0.0.0", auth=("user", "short"))
    port = free_port()
    auth = ("tester", "correct-horse-battery")
    demo, url = serve_demo(engine, host="0.0.0.0", port=port, auth=auth)
    try:
        local = f"http://127.0.0.1:{port}/"
        with pytest.raises(ValueError):
            Client(local, verbose=False)  # no login: refused
        assert httpx.get(local + "gradio_api/info", timeout=30).status_code in (401, 403)
        before = engine.version  # the trainer keeps publishing: bracket the answer
        info = Client(local, auth=auth, verbose=False).predict(api_name="/info")
        assert before <= info["version"] <= engine.version
        assert httpx.get(local + "monitoring", timeout=30).status_code in (401, 403, 404)
    finally:
        demo.close()
    # The main job says so before it starts anything.
    out = subprocess.run([sys.executable, "-m", "neuralos_example.main", "--demo-host", "0.0.0.0", "--duration", "5"],
                         capture_output=True, text=True, timeout=120, env={k: v for k, v in __import__("os").environ.items()
                                                                          if k != "RI_UI_AUTH"})
    assert out.returncode == 2 and "refusing to bind the NeuralOS demo to 0.0.0.0 without authentication" in out.stderr


@pytest.mark.browser
def test_demo_page_compares_the_current_model_with_the_base_side_by_side(loop: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    d = loop["d"]
    c = Client(d.url, verbose=False)
    s = c.predict(api_name="/new_session")
    assert "base_frame_png" not in c.predict(s["session"], 20, 30, "move", "", 1, api_name="/act")
    on = c.predict(s["session"], True, api_name="/compare")
    assert on["comparing"] and decode_png(__import__("base64").b64decode(on["base_frame_png"])).shape == (64, 64, 3)
    out = c.predict(s["session"], 5, 10, "left_click", "", 1, api_name="/act")
    assert decode_png(__import__("base64").b64decode(out["base_frame_png"])).shape == (64, 64, 3)
    assert not c.predict(s["session"], False, api_name="/compare")["comparing"]

    with ui_page(d.url) as page:
        expect(page.locator("#version")).to_contain_text("model version", timeout=90_000)
        base = page.locator("#base-screen")
        expect(base).to_be_hidden(timeout=60_000)
        page.locator("#compare input").check()
        expect(base.locator("img")).to_be_visible(timeout=90_000)
        before = base.locator("img").get_attribute("src")
        box = page.locator("#screen img").bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.3)  # on the home icon
        expect(page.locator("#info")).to_contain_text("step 1", timeout=90_000)
        expect(base.locator("img")).not_to_have_attribute("src", before or "", timeout=60_000)
        page.locator("#compare input").uncheck()
        expect(base).to_be_hidden(timeout=60_000)


@pytest.mark.browser
def test_per_task_evaluation_is_logged_and_plotted_one_line_per_task(loop: dict[str, Any]) -> None:
    from playwright.sync_api import expect

    from neuralos_example.data import TASKS
    from ray_interactive.ui.control_ui import serve_control_ui
    from ray_interactive.ui.dashboard import Dashboard, View

    client = loop["client"]
    rec = client.send("evaluate", source="api", comment="per-task metrics")
    assert rec.status.value != "rejected", rec.message
    rec = client.wait(rec, timeout=300)
    assert rec.status.value == "applied", rec.message
    keys = client.metric_keys()
    assert {f"eval/{t}/{m}" for t in TASKS for m in ("success", "rollout_psnr", "psnr")} <= set(keys)
    assert {"eval/frequent/success", "eval/rare/success"} <= set(keys)
    dash = Dashboard(client)
    dash.fetch()
    assert dash.eval_metrics()[0] == "success"
    view = View(eval_metric="success")
    # one line per task; a line of one point says its value in its name ("main: rare = 0")
    names = {t["name"].split(" = ")[0] for t in dash.figures(dash.fetch(view), view)["eval"]["data"]}
    assert {f"main: {t}" for t in (*TASKS, "frequent", "rare")} <= names, names

    ui, url = serve_control_ui(client, block=False)
    try:
        with ui_page(url) as page:
            plot = page.locator("#plot-eval")
            expect(plot).to_contain_text("one line per task", timeout=90_000)
            expect(plot).to_contain_text("open_browser", timeout=60_000)
    finally:
        ui.close()
