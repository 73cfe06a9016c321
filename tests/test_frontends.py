"""Steering loops that are not ours: a plain PyTorch loop (``ri.steer``) and Hugging Face's
``Trainer`` (``ri.hf``), on the real local Ray, with the same checks: an lr command is used
by the very next optimizer step (and logged so); pause holds the loop; evaluate; save and
load as a branch; stop; and the command log replays the run with the same losses."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import ray_interactive as ri
from ray_interactive.runtime.offline import FinishedRun

from .conftest import SHARED_DATA, free_port, wait_until

NEW_LR = 0.00123
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def client_of(name: str) -> Any:
    """The run's client once its controller is up (the loop may be holding, paused, at its start)."""
    try:
        return ri.connect(name)
    except ri.RunNotFound:
        return None


def losses(run_dir: Path, branch: str) -> dict[int, float]:
    m = FinishedRun(run_dir).metrics(keys=["loss"], branch=branch).get("loss", {"step": [], "value": []})
    return dict(zip(m["step"], m["value"]))


def metric(run_dir: Path, key: str, branch: str = "main") -> dict[int, float]:
    m = FinishedRun(run_dir).metrics(keys=[key], branch=branch).get(key, {"step": [], "value": []})
    return dict(zip(m["step"], m["value"]))


def steer_through_the_tour(client: Any, outcomes: dict[str, Any]) -> None:
    """The same commands for every front-end (the run starts paused at step 0)."""
    client.send("pause", at_step=10)
    client.wait(client.send("resume"))
    wait_until(lambda: client.status()["status"] == "paused" and client.status()["step"] == 10, timeout=120,
               what="the pinned pause at step 10")
    outcomes["lr"] = client.wait(client.send("update_optimizer", params={"lr": NEW_LR}))
    outcomes["evaluate"] = client.wait(client.send("evaluate"), timeout=120)
    outcomes["save"] = client.wait(client.send("save_checkpoint", tag="fork"))
    time.sleep(0.3)  # paused: the loop must not step meanwhile
    outcomes["paused_step"] = client.status()["step"]
    outcomes["rejected"] = client.send("set_data_mixture", weights={"x": 1.0})
    client.send("pause", at_step=20)
    client.wait(client.send("resume"))
    wait_until(lambda: client.status()["step"] == 20 and client.status()["status"] == "paused", timeout=120,
               what="the pinned pause at step 20")
    outcomes["load"] = client.wait(client.send("load_checkpoint", checkpoint_id="main@10", branch="b"))
    outcomes["clip"] = client.wait(client.send("set_grad_clip", max_norm=0.5))
    outcomes["stop"] = client.send("stop", at_step=25)
    client.wait(client.send("resume"))


def run_with_driver(session_client: Callable[[], Any], train: Callable[[], None]) -> dict[str, Any]:
    """Train in this thread while another one steers through the tour."""
    outcomes: dict[str, Any] = {}
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            client = wait_until(session_client, timeout=120, what="the run to start")
            steer_through_the_tour(client, outcomes)
        except BaseException as e:  # surfaced in the test's thread
            errors.append(e)

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    train()
    thread.join(60)
    if errors:
        raise errors[0]
    return outcomes


def check_tour(outcomes: dict[str, Any], run_dir: Path, lr_used: dict[int, float]) -> None:
    lr = outcomes["lr"]
    assert lr.status.value == "applied" and lr.applied_step == 10
    assert lr_used[11] == NEW_LR  # the very next optimizer step used exactly the new lr
    assert metric(run_dir, "lr")[11] == pytest.approx(NEW_LR)
    assert outcomes["evaluate"].status.value == "applied" and outcomes["evaluate"].message.startswith("eval/loss=")
    assert outcomes["save"].message == "saved main@10"
    assert outcomes["paused_step"] == 10
    assert outcomes["rejected"].status.value == "rejected" and "reads its own data" in outcomes["rejected"].message
    load = outcomes["load"]
    assert load.status.value == "applied" and load.message.startswith("loaded main@10 (step 10) as branch b")
    assert outcomes["clip"].status.value == "applied"
    status = FinishedRun(run_dir).status()
    assert status["status"] == "stopped" and status["branch"] == "b" and status["step"] == 25
    main, b = losses(run_dir, "main"), losses(run_dir, "b")
    assert sorted(main) == list(range(1, 21)) and sorted(b) == list(range(11, 26))
    assert metric(run_dir, "eval/loss")[10] > 0


# -- a plain PyTorch loop ------------------------------------------------------------------
def plain_loop(tmp_path: Path, name: str, **steer: Any) -> tuple[Path, dict[int, float], dict[str, Any]]:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    data = torch.Generator().manual_seed(1)
    w = torch.randn(8, 1, generator=data)
    valid = torch.randn(256, 8, generator=data)
    lr_used: dict[int, float] = {}
    run_dir = tmp_path / name

    def train() -> None:
        with ri.steer(name, model, opt, run_dir=run_dir, max_steps=100, metrics_interval_s=0.1,
                      evaluate=lambda m: {"loss": float((m(valid) - valid @ w).pow(2).mean())}, **steer) as s:
            opt.register_step_pre_hook(lambda o, a, k: lr_used.__setitem__(s.state.step + 1, o.param_groups[0]["lr"]))
            while s.running:
                x = torch.randn(32, 8, generator=data)
                loss = (model(x) - x @ w).pow(2).mean()
                loss.backward()
                s.step(loss=loss)

    outcomes: dict[str, Any] = {}
    if steer.get("replay") is None:
        outcomes = run_with_driver(lambda: client_of(name), train)
    else:
        train()
    return run_dir, lr_used, outcomes


def test_a_plain_loop_is_steered_like_any_run_and_its_log_replays_it(tmp_path: Path, ray_cluster: Any) -> None:
    run_dir, lr_used, outcomes = plain_loop(tmp_path, "plain", start_paused=True)
    check_tour(outcomes, run_dir, lr_used)
    assert FinishedRun(run_dir).status()["frontend"] == "loop"

    replay_dir, replay_lr, _ = plain_loop(tmp_path, "plain-replay", replay=run_dir)
    assert losses(replay_dir, "main") == losses(run_dir, "main")  # bit-identical on the CPU
    assert losses(replay_dir, "b") == losses(run_dir, "b")
    assert replay_lr == lr_used


def test_steer_refuses_bad_config_and_a_taken_name(tmp_path: Path, ray_cluster: Any) -> None:
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="grad_accumulation"):
        ri.steer("bad", model, opt, grad_accumulation=0)
    with pytest.raises(ValueError, match="no 'task' or 'lr' here"):
        ri.steer("bad", model, opt, lr=0.1)
    with ri.steer("taken", model, opt, run_dir=tmp_path / "a", max_steps=1) as s:
        with pytest.raises(ValueError, match="a run named 'taken' is already running"):
            ri.steer("taken", model, opt, run_dir=tmp_path / "b").start()
        while s.running:
            model(torch.ones(1, 2)).sum().backward()
            s.step()


def test_an_ending_loop_releases_its_command_poll_at_once(tmp_path: Path, ray_cluster: Any) -> None:
    """A loop ending must not wait out its puller's long poll (it made every HF ``train()``
    ~2 s longer); a poll made after the release comes back at once too (no race)."""
    import ray

    from ray_interactive.core.config import RunConfig
    from ray_interactive.runtime.inprocess import InProcessRun
    from ray_interactive.runtime.ports import RayControllerPort

    link = InProcessRun(RunConfig(name="released", run_dir=tmp_path / "released"))
    try:
        port, other = RayControllerPort(link.controller), RayControllerPort(link.controller)
        pending = link.controller.pull_commands.remote(link.next_seq - 1, 600.0, 0, port.poller)
        held = link.controller.pull_commands.remote(link.next_seq - 1, 600.0, 0, other.poller)
        port.release()
        assert ray.get(pending, timeout=45).records == []  # the poll itself would hold 60 s
        late = link.controller.pull_commands.remote(link.next_seq - 1, 600.0, 0, port.poller)
        assert ray.get(late, timeout=45).records == []
        assert ray.wait([held], timeout=0.5)[1] == [held]  # another loop's poll still waits
    finally:
        link.close()


def test_a_loop_that_cannot_be_edited_is_steered_at_optimizer_step(tmp_path: Path, ray_cluster: Any) -> None:
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ri.steer("wrapped", model, opt, run_dir=tmp_path / "w", max_steps=30, grad_accumulation=2).wrap_optimizer() as s:
        for _ in range(60):  # the user's loop, untouched: backward, optimizer.step()
            model(torch.randn(8, 4)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        assert s.state.step == 30  # two micro-batches per step
    assert FinishedRun(tmp_path / "w").status()["step"] == 30


# -- Hugging Face transformers.Trainer -----------------------------------------------------
def hf_run(tmp_path: Path, name: str, **steer: Any) -> tuple[Path, dict[int, float], dict[str, Any], Any]:
    from transformers import TrainerCallback

    from ray_interactive.examples.hf_wikitext import build_trainer

    torch.set_num_threads(1)
    lr_used: dict[int, float] = {}

    class ReadLr(TrainerCallback):  # what the optimizer step really uses
        def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kw: Any) -> None:
            lr_used[state.global_step + 1] = optimizer.param_groups[0]["lr"]  # before HF's scheduler steps

    trainer = build_trainer(SHARED_DATA, tmp_path / f"{name}-out", max_steps=100, n_layer=1, n_embd=32, block=32,
                            batch_size=4, train_chars=100_000, eval_chars=8_000, callbacks=[ReadLr()])
    run_dir = tmp_path / name
    ri.hf.steer(trainer, run=name, run_dir=run_dir, metrics_interval_s=0.1, **steer)
    outcomes: dict[str, Any] = {}
    if steer.get("replay") is None:
        outcomes = run_with_driver(lambda: client_of(name), trainer.train)
    else:
        trainer.train()
    return run_dir, lr_used, outcomes, trainer


@pytest.mark.skipif(not (SHARED_DATA / "wikitext-2").exists(), reason="needs ../shared/data")
def test_a_hugging_face_trainer_is_steered_by_callbacks_and_its_log_replays_it(tmp_path: Path, ray_cluster: Any) -> None:
    run_dir, lr_used, outcomes, trainer = hf_run(tmp_path, "hf", start_paused=True)
    check_tour(outcomes, run_dir, lr_used)
    logged = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    assert logged[11] == NEW_LR  # HF's own log says so too
    assert lr_used[12] < NEW_LR  # and HF's linear decay goes on from it
    status = FinishedRun(run_dir).status()
    assert status["frontend"] == "hf"
    rejected = outcomes["rejected"].message
    assert "Hugging Face Trainer reads its own dataset" in rejected

    replay_dir, replay_lr, _, _ = hf_run(tmp_path, "hf-replay", replay=run_dir)
    assert losses(replay_dir, "main") == losses(run_dir, "main")
    assert losses(replay_dir, "b") == losses(run_dir, "b")
    assert replay_lr == lr_used


@pytest.mark.skipif(not (SHARED_DATA / "wikitext-2").exists(), reason="needs ../shared/data")
def test_a_hugging_face_run_refuses_what_hf_cannot_do(tmp_path: Path, ray_cluster: Any) -> None:
    from ray_interactive.examples.hf_wikitext import build_trainer

    trainer = build_trainer(SHARED_DATA, tmp_path / "out", max_steps=200, n_layer=1, n_embd=32, block=32, batch_size=4,
                            train_chars=50_000, eval_chars=4_000)
    with pytest.raises(ValueError, match="'lr' is the Trainer's own"):
        ri.hf.steer(trainer, run="hf-bad", lr=0.1)
    ri.hf.steer(trainer, run="hf-refuse", run_dir=tmp_path / "r", start_paused=True)
    seen: dict[str, Any] = {}

    def drive() -> None:
        client = wait_until(lambda: client_of("hf-refuse"), timeout=120)
        wait_until(lambda: client.status()["status"] == "paused", timeout=120, what="the run to describe itself")
        seen["accumulation"] = client.send("set_grad_accumulation", steps=4)
        seen["stop"] = client.wait(client.send("stop"))

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    trainer.train()
    thread.join(30)
    assert seen["accumulation"].status.value == "rejected"
    assert "HF fixes gradient_accumulation_steps" in seen["accumulation"].message
    # HF checks should_training_stop only after a step: a stop before the first one ends after it
    assert seen["stop"].status.value == "applied" and FinishedRun(tmp_path / "r").status()["step"] == 1


# -- the control UI, unchanged, on both --------------------------------------------------
@pytest.mark.browser
@pytest.mark.parametrize("frontend", ["loop", "hf"])
def test_the_control_ui_steers_a_loop_and_a_hugging_face_trainer(frontend: str, tmp_path: Path, ray_cluster: Any) -> None:
    from playwright.sync_api import expect, sync_playwright

    from ray_interactive.ui.control_ui import serve_control_ui

    name = f"ui-{frontend}"
    errors: list[BaseException] = []

    def train() -> None:
        try:
            if frontend == "loop":
                model = torch.nn.Linear(8, 1)
                opt = torch.optim.AdamW(model.parameters(), lr=0.01)
                with ri.steer(name, model, opt, run_dir=tmp_path / name, metrics_interval_s=0.2) as s:
                    while s.running:
                        model(torch.randn(16, 8)).pow(2).mean().backward()
                        s.step(loss=None)
                        time.sleep(0.01)  # a step of a real model
            else:
                from ray_interactive.examples.hf_wikitext import build_trainer

                trainer = build_trainer(SHARED_DATA, tmp_path / "out", max_steps=100_000, n_layer=1, n_embd=32,
                                        block=32, batch_size=4, train_chars=50_000, eval_chars=4_000)
                ri.hf.steer(trainer, run=name, run_dir=tmp_path / name, metrics_interval_s=0.2)
                trainer.train()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    client = wait_until(lambda: client_of(name), timeout=120, what="the run to start")
    wait_until(lambda: client.status()["status"] == "running", timeout=120, what="the run to run")
    ui, url = serve_control_ui(client, port=free_port(), block=False, refresh_s=1.0, command_wait_s=30.0)
    label = "plain PyTorch loop" if frontend == "loop" else "Hugging Face Trainer"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(url)
            status = page.locator("#status")
            expect(status).to_contain_text("RUNNING")
            expect(status).to_contain_text(label)
            # what this front-end cannot do is not offered, and the page says why
            caps = page.locator("#caps")
            expect(caps).to_contain_text("set_data_mixture (")
            expect(page.get_by_role("tab", name="Data")).to_be_hidden()  # it reads its own data
            if frontend == "hf":
                expect(caps).to_contain_text("set_grad_accumulation (set_grad_accumulation cannot apply")
                expect(page.locator("#btn-accum")).to_be_disabled()
            else:
                expect(caps).to_contain_text("evaluate (this loop has no evaluation")
            page.locator("#opt-value textarea, #opt-value input").first.fill("3e-4")
            page.locator("#opt-apply").click()
            expect(page.locator("#opt-msg")).to_contain_text("applied at step", timeout=60_000)
            page.get_by_role("tab", name="Run & checkpoints").click()
            if frontend == "loop":
                expect(page.locator("#btn-evaluate")).to_be_disabled()
            page.locator("#btn-pause").click()
            expect(status).to_contain_text("PAUSED", timeout=60_000)
            page.locator("#btn-save").click()
            expect(page.locator("#ckpt-msg")).to_contain_text("saved", timeout=60_000)
            page.locator("#btn-resume").click()
            expect(status).to_contain_text("RUNNING", timeout=60_000)
            browser.close()
        assert client.snapshot()["groups"][0]["hparams"]["lr"] == pytest.approx(3e-4, rel=0.5)  # decays under HF
    finally:
        client.send("stop")
        thread.join(120)
        ui.close()
    assert not errors, errors
    assert FinishedRun(tmp_path / name).status()["status"] == "stopped"


# -- per-module health, from the steering core, on every front-end -------------------------
@pytest.mark.skipif(not (SHARED_DATA / "wikitext-2").exists(), reason="needs ../shared/data")
@pytest.mark.parametrize("frontend", ["loop", "hf"])
def test_per_module_health_is_sampled_on_a_loop_and_a_hugging_face_trainer(
    frontend: str, tmp_path: Path, ray_cluster: Any
) -> None:
    name = f"health-{frontend}"
    if frontend == "loop":
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        with ri.steer(name, model, opt, run_dir=tmp_path / name, max_steps=20, diagnostics_every=5) as s:
            while s.running:
                loss = model(torch.randn(16, 8)).pow(2).mean()
                loss.backward()
                s.step(loss=loss)
        group = "0"
    else:
        from ray_interactive.examples.hf_wikitext import build_trainer

        trainer = build_trainer(SHARED_DATA, tmp_path / "out", max_steps=20, n_layer=1, n_embd=32, block=32,
                                batch_size=4, train_chars=50_000, eval_chars=4_000)
        ri.hf.steer(trainer, run=name, run_dir=tmp_path / name, diagnostics_every=5)
        trainer.train()
        group = "transformer.h.0.mlp"  # one layer: the tree is cut a level deeper (7 groups <= 8)
    m = FinishedRun(tmp_path / name).metrics(keys=[f"health/{group}/{k}" for k in ("grad_norm", "update_ratio", "act_std")])
    for k, series in m.items():
        assert series["step"] == [5, 10, 15, 20], k
        assert all(v > 0 for v in series["value"]), k
    assert len(m) == 3


# -- the health guard, on every front-end --------------------------------------------------
@pytest.mark.skipif(not (SHARED_DATA / "wikitext-2").exists(), reason="needs ../shared/data")
@pytest.mark.parametrize(("frontend", "policy"), [("loop", "pause"), ("hf", "pause"), ("hf", "rollback")])
def test_the_health_guard_holds_on_every_front_end(frontend: str, policy: str, tmp_path: Path, ray_cluster: Any) -> None:
    """An lr that explodes (valid alone, explosive with weight decay) never puts a NaN in the
    weights: the step is dropped and the run's policy follows, as on our trainer."""
    name, run_dir = f"guard-{frontend}-{policy}", tmp_path / f"guard-{frontend}-{policy}"
    steer = {"run_dir": run_dir, "metrics_interval_s": 0.1, "checkpoint_every": 5,
             "health": {"on_non_finite": policy, "lr_factor": 0.5}}
    seen: dict[str, Any] = {}

    def drive() -> None:
        client = wait_until(lambda: client_of(name), timeout=120, what="the run to start")
        wait_until(lambda: client.status()["step"] >= 6, timeout=120, what="training past the first checkpoint")
        seen["lr"] = client.wait(client.send("update_optimizer", params={"lr": 10.0, "weight_decay": 10.0}))
        if policy == "pause":
            seen["status"] = wait_until(lambda: (s := client.status())["status"] == "paused" and s, timeout=120,
                                        what="the guard to pause the run")
        else:
            def rolled_back() -> Any:
                system = [(r["kind"], r["status"]) for r in client.commands() if r["source"] == "system"]
                return ("resume", "applied") in system and system
            seen["system"] = wait_until(rolled_back, timeout=120, what="the rollback")
            seen["rollback"] = next(r for r in client.commands() if r["kind"] == "rollback")
            seen["lr_after"] = next(r for r in client.commands() if r["source"] == "system"
                                    and r["kind"] == "update_optimizer")
        seen["stop"] = client.wait(client.send("stop"))

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    torch.set_num_threads(1)
    if frontend == "loop":  # a loop that cannot be edited: the guard sits in optimizer.step()
        torch.manual_seed(0)
        model: torch.nn.Module = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        with ri.steer(name, model, opt, max_steps=2000, **steer).wrap_optimizer() as s:
            while s.running:
                x = torch.randn(32, 8)
                (model(x) - x.sum(1, keepdim=True)).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
    else:
        from ray_interactive.examples.hf_wikitext import build_trainer

        trainer = build_trainer(SHARED_DATA, tmp_path / "out", max_steps=2000, n_layer=1, n_embd=32, block=32,
                                batch_size=4, train_chars=50_000, eval_chars=4_000)
        ri.hf.steer(trainer, run=name, **steer)
        trainer.train()
        model = trainer.model
    thread.join(60)
    assert not thread.is_alive(), "the driver did not finish"
    assert seen["lr"].status.value == "applied", seen["lr"]
    assert seen["stop"].status.value == "applied", seen["stop"]
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no NaN reached the weights
    run = FinishedRun(run_dir)
    assert run.status()["status"] == "stopped"
    if policy == "pause":
        message = seen["status"]["message"]
        assert "health guard paused the run: non-finite" in message and "grad norm=" in message, message
        assert "Lower the lr, clip gradients or load a checkpoint, then resume" in message
        pause = next(r for r in run.commands() if r["source"] == "system")
        assert pause["kind"] == "pause" and "health guard" in pause["message"]
    else:
        assert seen["system"][:4] == [("rollback", "applied"), ("load_checkpoint", "applied"),
                                      ("update_optimizer", "applied"), ("resume", "applied")], seen["system"]
        assert "Rolling back to main@" in seen["rollback"]["message"]
        assert seen["lr_after"]["args"]["params"]["lr"] == pytest.approx(5.0, rel=0.01)  # HF's decay had moved it a little
    skipped = run.metrics(keys=["health/skipped_steps"], branch="main")["health/skipped_steps"]["value"]  # where it blew up
    assert skipped and skipped[-1] >= 1
