"""The control UI knows its run's front-end (no Ray, no browser): what it offers and why not,
the forms' values from the run's settings, readable numbers, and rates of a run not running."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ray_interactive.core.config import RunConfig
from ray_interactive.core.reporting import Reporter, Telemetry
from ray_interactive.core.state import OwnSchedule, TrainState
from ray_interactive.runtime.offline import FinishedRun
from ray_interactive.ui.capabilities import READ_ONLY_WHY, Capabilities
from ray_interactive.ui.dashboard import Dashboard, View, _show_value

HF_WHY = "set_grad_accumulation cannot apply to a Hugging Face Trainer run"


def _hf_state() -> dict:
    return {
        "status": {"status": "running", "step": 40, "branch": "main", "frontend": "hf"},
        "snapshot": {"frontend": "hf", "unsupported": {"set_grad_accumulation": HF_WHY, "set_data_mixture": "own data"},
                     "schedule": {"kind": "hf", "scheduler": "LambdaLR", "base_lrs": [1e-4], "ours": [None]},
                     "grad_clip": 1.0, "grad_accumulation": 2, "groups": [{"name": "0", "hparams": {"lr": 5e-5}}]},
        "data": {}, "eval_every": None, "metric_keys": [], "branches": {"main": {"created_at": 0}}, "metrics": {},
    }


def test_a_hugging_face_run_offers_only_what_it_can_apply_and_says_why() -> None:
    caps = Capabilities.of(_hf_state())
    assert caps.name == "Hugging Face Trainer" and caps.own_data
    assert caps.why_not("set_grad_accumulation") == HF_WHY and caps.why_not("update_optimizer") is None
    line = caps.markdown()
    assert "Hugging Face Trainer" in line and "`set_grad_accumulation` (" + HF_WHY in line and "data freshness" in line
    assert caps.schedule_form() is None and "the Trainer's own LambdaLR" in caps.schedule_text()
    assert "eval_strategy" in caps.eval_note()
    assert "reads its own data" in caps.freshness_empty()


def test_our_trainer_offers_everything_and_its_forms_hold_its_schedule() -> None:
    state = {"status": {"status": "running", "step": 7, "frontend": "trainer"}, "eval_every": 25,
             "data": {"sources": {"base": {"live": False}}},
             "snapshot": {"frontend": "trainer", "unsupported": {}, "groups": [{"name": "0", "hparams": {"lr": 1e-4}}],
                          "schedule": {"kind": "constant", "steps": None, "warmup_steps": 100, "min_lr_ratio": 0.0,
                                       "gamma": 0.1, "start_step": 0, "base_lrs": [1e-4]}}}
    caps = Capabilities.of(state)
    assert caps.markdown() == "**our Trainer** · every command applies"
    assert caps.schedule_form() == {"kind": "constant", "steps": None, "warmup": 100, "min_lr_ratio": 0.0, "gamma": 0.1}
    assert caps.schedule_text() == "now: constant, 100 warmup steps" and caps.first_lr() == 1e-4
    assert caps.eval_note() == "next at step 25 (every 25)"
    assert "no live source" in caps.freshness_empty()
    # a finished run: nothing is offered, whatever its front-end could do
    done = Capabilities.of({**state, "status": {**state["status"], "finished": True}})
    assert done.why_not("pause") == READ_ONLY_WHY and "every control is off" in done.markdown()
    assert done.eval_note() == "" and done.key() != caps.key()


def test_the_optimizer_table_shows_numbers_for_people_at_the_logged_lr() -> None:
    assert _show_value(1.0000000000000002e-06) == "1e-06"
    assert _show_value([0.9, 0.95000000000000001]) == "[0.9, 0.95]" and _show_value(True) == "true"
    assert _show_value(3) == "3" and _show_value(0.01) == "0.01"
    dash = Dashboard(client=None)
    snap = {"step": 1, "groups": [{"name": "decay", "hparams": {"lr": 1.0000000000000002e-06, "weight_decay": 0.1}},
                                  {"name": "no_decay", "hparams": {"lr": 2e-06}}]}
    # the run described its optimizer at step 1 (warmup); the lr logged since is the live one
    state = {"snapshot": snap, "status": {"branch": "main"},
             "metrics": {"main": {"lr": {"step": [1, 150], "time": [0.0, 1.0], "value": [1e-6, 1e-4]}}}}
    table = dash.optimizer_table(state)
    assert table.to_dict("records") == [
        {"group": "decay", "param": "lr", "value": "0.0001"},
        {"group": "decay", "param": "weight_decay", "value": "0.1"},
        {"group": "no_decay", "param": "lr", "value": "0.0002"},
    ]


def test_a_rate_reads_zero_unless_the_run_is_running(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainState(schedule=OwnSchedule.starting(opt, "constant", None, 0.0, 0.1, 0))
    telemetry = Telemetry(RunConfig(name="r", run_dir=tmp_path / "r"), state, Reporter(None), lambda: "trainer")
    telemetry.step_done(64, 0.5)
    assert telemetry.status().samples_per_s == 128.0
    state.paused = True
    assert telemetry.status().samples_per_s == 0.0
    state.paused, state.stopping = False, "stop"
    assert telemetry.status().samples_per_s == 0.0
    # a finished run's status (status --json, the UI) says 0, whatever rate it last saved
    (tmp_path / "r").mkdir()
    RunConfig(name="r", run_dir=tmp_path / "r").save(tmp_path / "r" / "config.json")
    (tmp_path / "r" / "status.json").write_text(json.dumps({"status": "running", "step": 9, "samples_per_s": 55.0}))
    assert FinishedRun(tmp_path / "r").status()["samples_per_s"] == 0.0


def test_the_freshness_plot_of_a_loop_says_it_reads_its_own_data() -> None:
    dash = Dashboard(client=None)
    dash.state = state = {**_hf_state(), "snapshot": {"frontend": "loop", "unsupported": {}}}
    fig = dash.figures(state, View())["freshness"]
    assert "reads its own data" in fig["layout"]["annotations"][0]["text"].replace("<br>", " ")
