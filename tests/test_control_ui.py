"""The control UI: served over HTTP for a real run, driven by headless Chromium and by
gradio_client (the same endpoints scripts and agents use)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ray_interactive.core.config import RunConfig
from ray_interactive.core.controller import Controller
from ray_interactive.core.messages import Progress, TrainerStatus
from ray_interactive.runtime.launch import RunHandle, start_run
from ray_interactive.runtime.offline import FinishedRun
from ray_interactive.ui.control_ui import check_bind, serve_control_ui
from ray_interactive.ui.dashboard import Dashboard

from .conftest import CHROMIUM, REPO, free_port, regression_config, running_client, ui_page, wait_until

AUTH = ("tester", "correct-horse-battery")
ARTIFACTS = REPO / "test-artifacts"
ENDPOINTS = {
    "refresh",
    "choices",
    "update_optimizer",
    "set_lr_schedule",
    "set_grad_clip",
    "set_grad_accumulation",
    "send_command",
    "pause",
    "resume",
    "stop",
    "evaluate",
    "publish_weights",
    "save_checkpoint",
    "load_checkpoint",
    "set_data_mixture",
    "update_module",
    "cancel",
    "checkpoints",
    "start_agent",
    "stop_agent",
}


@pytest.fixture(scope="module")
def run(ray_cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunHandle]:
    config = regression_config(
        tmp_path_factory.mktemp("ui"), task_kwargs={"live_source": True}, eval_every=25, metrics_interval_s=0.2
    )
    handle = start_run(config)
    yield handle
    handle.shutdown()


@pytest.fixture(scope="module")
def ui_url(run: RunHandle) -> Iterator[str]:
    ui, url = serve_control_ui(running_client(run), port=free_port(), auth=AUTH, block=False, refresh_s=1.0, command_wait_s=30.0)  # a loaded CI box
    yield url
    ui.close()


def test_binding_beyond_localhost_needs_a_login() -> None:
    with pytest.raises(ValueError, match="without authentication"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ValueError, match="at least 8 characters"):
        check_bind("0.0.0.0", ("u", "short"))
    check_bind("0.0.0.0", AUTH)
    check_bind("127.0.0.1", None)


def test_every_endpoint_works_through_gradio_client_and_wrong_logins_are_refused(ui_url: str, run: RunHandle) -> None:
    from gradio_client import Client

    with pytest.raises(ValueError):
        Client(ui_url, auth=("tester", "wrong-password"), verbose=False)
    with pytest.raises(ValueError):
        Client(ui_url, verbose=False)
    gc = Client(ui_url, auth=AUTH, verbose=False)
    assert ENDPOINTS <= {name.lstrip("/") for name in gc.view_api(print_info=False, return_format="dict")["named_endpoints"]}
    client = running_client(run)

    out = gc.predict("step", 0.6, False, None, None, None, "update_ratio", None, api_name="/refresh")
    assert "RUNNING" in out[0]
    loss = json.loads(out[1]["plot"])  # a Plotly figure: one trace per line, each with its colour
    lines = {t["name"]: t for t in loss["data"]}
    colours = {name: t["line"]["color"] for name, t in lines.items()}
    assert colours["main"] != colours["main raw"] and colours["main raw"] > colours["main"]  # the raw line is paler
    assert lines["main"]["y"] and set(lines) >= {"main", "main raw"}
    assert len(lines["main raw"]["x"]) <= 400  # thinned on the server
    # Legible: named axes and legend, the lr drawn as steps and never smoothed, real log axes,
    # and a panel with nothing to show says why.
    layout = loss["layout"]
    assert layout["xaxis"]["title"]["text"].startswith("step") and layout["yaxis"]["title"]["text"] == "loss"
    assert layout["legend"]["title"]["text"] == "branch" and layout["hovermode"] == "x unified"
    lr = json.loads(out[3]["plot"])
    assert [t["name"] for t in lr["data"]] == ["main"] and lr["data"][0]["line"]["shape"] == "hv"
    fresh = json.loads(out[6]["plot"])
    assert not fresh["data"] and "no live rows trained on yet" in fresh["layout"]["annotations"][0]["text"]
    logged = gc.predict("time", 0.0, True, None, None, None, "update_ratio", None, api_name="/refresh")
    layout = json.loads(logged[1]["plot"])["layout"]
    assert layout["yaxis"]["type"] == "log" and layout["xaxis"]["title"]["text"].startswith("wall time")

    assert "applied at step" in gc.predict("all", "lr", "4e-4", api_name="/update_optimizer")
    assert all(g["hparams"]["lr"] == pytest.approx(4e-4) for g in client.snapshot()["groups"])
    assert "rejected: lr must be in (0, 10]" in gc.predict("all", "lr", "-1", api_name="/update_optimizer")
    assert "must be a number" in gc.predict("all", "lr", "fast please", api_name="/update_optimizer")
    assert "applied" in gc.predict("cosine", 500, 0, 0.1, 0.1, api_name="/set_lr_schedule")
    assert "rejected" in gc.predict("linear", -5, 0, 0.0, 0.1, api_name="/set_lr_schedule")
    assert "applied" in gc.predict("2.5", api_name="/set_grad_clip")
    assert client.snapshot()["grad_clip"] == 2.5
    assert "applied" in gc.predict(2, api_name="/set_grad_accumulation")
    assert "applied" in gc.predict(1, api_name="/set_grad_accumulation")
    assert "applied" in gc.predict(api_name="/pause")
    wait_until(lambda: client.status()["status"] == "paused", what="paused")
    assert "applied" in gc.predict(api_name="/resume")
    assert "applied" in gc.predict(api_name="/evaluate")
    assert "published weights version" in gc.predict(api_name="/publish_weights")
    assert "saved" in (msg := gc.predict("api-tag", api_name="/save_checkpoint"))
    ckpt = msg.split("saved ")[1].split()[0]
    assert "as branch api-branch" in gc.predict(ckpt, "api-branch", api_name="/load_checkpoint")
    assert "applied" in gc.predict("base=0.6 live=0.4", api_name="/set_data_mixture")
    assert "rejected: unknown data source" in gc.predict("nope=1", api_name="/set_data_mixture")
    assert "applied" in gc.predict("3", "set_attribute", "p", "0.05", api_name="/update_module")
    assert "rejected" in gc.predict("3", "set_attribute", "p", "7", api_name="/update_module")
    assert "rejected: no module named" in gc.predict("no.such", "freeze", "", "", api_name="/update_module")
    # Any command kind, as the CLI's send takes it (a kind added in one file appears here too)
    assert "cleared the optimizer state" in gc.predict("reset_optimizer_state", "group=decay", api_name="/send_command")
    assert "applied" in gc.predict("set_grad_clip", "max_norm=null", api_name="/send_command")
    assert client.snapshot()["grad_clip"] is None
    with pytest.raises(Exception, match="not in the list of choices"):  # Gradio refuses it before our handler
        gc.predict("fly", "", api_name="/send_command")
    assert "not sent: unknown command kind 'fly'" in Dashboard(client).send_any("fly", "")
    assert "rejected: no param group named 'x'" in gc.predict("reset_optimizer_state", "group=x", api_name="/send_command")
    assert "not sent: expected key=value" in gc.predict("save_checkpoint", "tag", api_name="/send_command")
    choices = gc.predict(api_name="/choices")
    assert ["api-tag", "api-tag"] not in choices[2]["choices"] and any(ckpt in c for c in choices[2]["choices"])
    drawable = {c[0] if isinstance(c, (list, tuple)) else c for c in choices[7]["choices"]}  # "also draw"
    assert {"main", "api-branch"} <= drawable
    out = gc.predict("step", 0.6, False, None, None, None, "update_ratio", None, ["main"], api_name="/refresh")
    assert "UNREACHABLE" not in out[0] and "main" in {t["name"] for t in json.loads(out[1]["plot"])["data"]}
    assert "unknown action" in Dashboard(client).simple("explode")
    rows = client.commands(limit=30)
    # Every control went through the command API, stamped "ui" (a payload that did not
    # even parse, like steps=-5, is logged without a source).
    assert {r["source"] for r in rows if r["source"]} == {"ui"}
    assert any(r["status"] == "rejected" and r["kind"] == "set_lr_schedule" for r in rows)


def test_pending_commands_are_cancelled_and_checkpoints_paged_from_the_ui(ui_url: str, run: RunHandle) -> None:
    from gradio_client import Client

    gc = Client(ui_url, auth=AUTH, verbose=False)
    client = running_client(run)
    ckpt = client.wait(client.send("save_checkpoint", tag="paged", source="ui")).message.split("saved ")[1]
    far = client.send("set_grad_clip", max_norm=0.5, at_step=client.status()["step"] + 10**8, source="ui")
    choices = gc.predict(api_name="/choices")  # the lists change when asked (↻), never under a cursor
    pending = [c[0] if isinstance(c, (list, tuple)) else c for c in choices[5]["choices"]]
    label = f"#{far.seq} set_grad_clip (at step {far.command.at_step})"
    assert label in pending
    msg = gc.predict(label, api_name="/cancel")
    assert "cancel applied at step" in msg and f"cancelled #{far.seq} set_grad_clip" in msg
    assert client.command(far.id).status.value == "cancelled"
    assert "not sent: pick a pending command" in gc.predict("", api_name="/cancel")
    table, info, number = gc.predict(1, api_name="/checkpoints")
    assert number == 1 and "newest first" in info and ckpt in json.dumps(table)


@pytest.mark.browser
def test_a_person_steers_the_run_in_a_real_browser(ui_url: str, run: RunHandle) -> None:
    from playwright.sync_api import expect

    client = running_client(run)
    ARTIFACTS.mkdir(exist_ok=True)
    with ui_page(ui_url, AUTH) as page:
        status = page.locator("#status")
        expect(status).to_contain_text("RUNNING")
        # the page knows the run: what it offers, and its forms hold the run's settings
        expect(page.locator("#caps")).to_contain_text("our Trainer · every command applies")
        settings = client.snapshot()
        expect(page.locator("#accum input")).to_have_value(str(settings["grad_accumulation"]))
        expect(page.locator("#sched-kind input")).to_have_value(settings["schedule"]["kind"])
        plot = page.locator("#plot-loss")
        expect(plot.locator("svg.main-svg, canvas").first).to_be_visible()  # Plotly has drawn it
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "control_ui_start.png"), full_page=True)
        first = plot.screenshot()
        wait_until(lambda: plot.screenshot() != first, timeout=120, interval=1.0, what="the loss plot to change")

        # Change the lr: the message and the history row say "applied at step N".
        page.locator("#opt-value textarea, #opt-value input").first.fill("3e-4")
        page.locator("#opt-apply").click()
        expect(page.locator("#opt-msg")).to_contain_text("applied at step", timeout=30_000)
        history = page.locator("#history")
        expect(history).to_contain_text("update_optimizer")
        expect(history).to_contain_text("applied at step")
        assert all(g["hparams"]["lr"] == pytest.approx(3e-4) for g in client.snapshot()["groups"])

        # An invalid lr: the reason next to the control, and training goes on.
        page.locator("#opt-value textarea, #opt-value input").first.fill("-0.5")
        page.locator("#opt-apply").click()
        expect(page.locator("#opt-msg")).to_contain_text("rejected: lr must be in (0, 10]")
        step = client.status()["step"]
        wait_until(lambda: client.status()["step"] > step + 5, what="training to go on")

        # Pause and resume.
        page.get_by_role("tab", name="Run & checkpoints").click()
        page.locator("#btn-pause").click()
        expect(status).to_contain_text("PAUSED", timeout=30_000)
        page.locator("#btn-resume").click()
        expect(status).to_contain_text("RUNNING", timeout=30_000)

        # Save a checkpoint and load it as a new branch: the branch shows up.
        page.locator("#btn-save").click()
        expect(page.locator("#ckpt-msg")).to_contain_text("saved")
        ckpt = page.locator("#ckpt-msg").inner_text().split("saved ")[1].split()[0]
        box = page.locator("#ckpt-select input").first
        box.fill(ckpt)
        box.press("Enter")
        page.locator("#branch-name textarea, #branch-name input").first.fill("ui-branch")
        page.locator("#btn-load").click()
        expect(page.locator("#ckpt-msg")).to_contain_text("as branch ui-branch", timeout=30_000)
        expect(page.locator("#branch-tree")).to_contain_text("ui-branch")
        expect(status).to_contain_text("ui-branch")
        wait_until(lambda: client.metrics(keys=["loss"], branch="ui-branch").get("loss"), what="the branch's loss")
        page.wait_for_timeout(2500)  # a refresh draws the new branch's line
        page.screenshot(path=str(ARTIFACTS / "control_ui.png"), full_page=True)
    assert (ARTIFACTS / "control_ui.png").stat().st_size > 10_000
    assert os.path.getsize(ARTIFACTS / "control_ui.png") > 0


@pytest.mark.browser
def test_a_ui_whose_run_stops_says_so_keeps_its_history_and_banners_a_lost_server(
    ray_cluster: dict[str, Any], tmp_path: Path
) -> None:
    from gradio_client import Client

    handle = start_run(regression_config(tmp_path, checkpoint_every=20))
    client = handle.client()
    wait_until(lambda: client.status()["step"] > 30, what="training")
    ui, url = serve_control_ui(client, port=free_port(), block=False, refresh_s=3600, command_wait_s=30.0)  # we refresh by hand
    try:
        gc = Client(url, verbose=False)
        assert "RUNNING" in gc.predict("step", 0.0, False, None, None, None, "update_ratio", None, api_name="/refresh")[0]
        client.wait(client.send("save_checkpoint", tag="before-the-end"))
        client.stop()
        handle.shutdown()  # the run's actors are gone: what a finished run is
        out = gc.predict("step", 0.0, False, None, None, None, "update_ratio", None, api_name="/refresh")
        assert "**STOPPED**" in out[0] and "read-only" in out[0], out[0]
        assert json.loads(out[1]["plot"])["data"][0]["y"]  # the loss is still there, from the run dir
        assert "save_checkpoint" in json.dumps(out[11])  # and the command history (after 8 plots, tree, branches)
        assert "has ended" in gc.predict(api_name="/pause") and "resume it with" in gc.predict(api_name="/pause")
        table, info, _ = gc.predict(1, api_name="/checkpoints")
        assert "before-the-end" in json.dumps(table)
        from playwright.sync_api import expect, sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page()
                page.set_default_timeout(60_000)
                page.goto(url)
                expect(page.locator("#status")).to_contain_text("STOPPED", timeout=60_000)
                expect(page.locator("#opt-apply")).to_be_disabled()  # read from its directory: nothing to steer
                ui.close()  # the process serving the page goes away
                banner = page.locator("#ri-stopped")
                expect(banner).to_contain_text("UI server has stopped", timeout=60_000)
                expect(banner).to_contain_text(f"ray-interactive ui {handle.config.resolved_run_dir}", timeout=60_000)
            finally:
                browser.close()
    finally:
        ui.close()


@pytest.mark.browser
def test_a_finished_run_s_page_offers_no_control_and_shows_its_one_evaluation(tmp_path: Path) -> None:
    """Read from its directory (no Ray): every control is off and the page says why; an
    evaluation plot of one point draws it and says its value."""
    from playwright.sync_api import expect

    config = RunConfig(name="done", run_dir=tmp_path / "run", eval_every=100)
    c = Controller(config)
    rows = [(k, float(k), {"loss": 3.0 / k, "lr": 1e-3, **({"eval/loss": 2.5} if k == 30 else {})}) for k in range(1, 41)]
    c.trainer_progress(Progress(branch="main", status=TrainerStatus(status="stopped", step=40, branch="main", time=1.0),
                                rows=rows))
    c.close()
    ui, url = serve_control_ui(FinishedRun(config.resolved_run_dir), port=free_port(), block=False, refresh_s=3600)
    try:
        with ui_page(url) as page:
            expect(page.locator("#status")).to_contain_text("STOPPED")
            expect(page.locator("#caps")).to_contain_text("a finished run takes no commands (read-only)")
            expect(page.locator("#opt-apply")).to_be_disabled()
            expect(page.locator("#btn-accum")).to_be_disabled()
            expect(page.locator("#plot-eval")).to_contain_text("2.5 at step 30")
            expect(page.locator("#plot-eval .point").first).to_be_visible()  # the one point, as a marker
            page.get_by_role("tab", name="Run & checkpoints").click()
            for button in ("#btn-pause", "#btn-save", "#btn-load", "#btn-evaluate"):
                expect(page.locator(button)).to_be_disabled()
    finally:
        ui.close()
