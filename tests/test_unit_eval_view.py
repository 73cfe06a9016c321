"""What the control UI's eval plot and the end-of-run summary make of evaluation metrics (no Ray):
one line per task when a task reports per-task metrics, the loss when it reports a loss."""

from __future__ import annotations

from ray_interactive.summary import eval_summary
from ray_interactive.ui.dashboard import Dashboard, View


def _series(steps: list[int], values: list[float]) -> dict[str, list]:
    return {"step": steps, "time": [float(s) for s in steps], "value": values}


def test_the_eval_plot_draws_one_line_per_task_for_the_metric_picked() -> None:
    keys = ["loss", "eval/create_folder/success", "eval/open_home/success", "eval/frequent/success", "eval/create_folder/psnr"]
    dash = Dashboard(client=None)
    dash.state = {"metric_keys": keys}
    assert dash.eval_metrics() == ["success", "psnr"]  # success first: the headline of a task
    state = {"metric_keys": keys, "branches": {"main": {"created_at": 0}},
             "metrics": {"main": {k: _series([1, 300], [0.5, 0.9]) for k in keys}}}
    dash.state = state
    fig = dash.figures(state, View())["eval"]
    names = {t["name"] for t in fig["data"]}
    assert names == {"main: create_folder", "main: open_home", "main: frequent"}
    assert "one line per task" in fig["layout"]["title"]["text"]
    psnr = {t["name"] for t in dash.figures(state, View(eval_metric="psnr"))["eval"]["data"]}
    assert psnr == {"main: create_folder"}
    # a task that reports a loss keeps its plain eval-loss plot
    dash.state = plain = {"metric_keys": ["loss", "eval/loss"], "branches": {"main": {"created_at": 0}},
                          "metrics": {"main": {"eval/loss": _series([10, 20], [2.0, 1.5])}}}
    assert [t["name"] for t in dash.figures(plain, View())["eval"]["data"]] == ["main"]


def test_the_summary_reports_each_task_first_and_last() -> None:
    m = {"loss": _series([1, 2], [0.04, 0.08]),
         "eval/create_folder/success": _series([1, 450], [0.67, 1.0]),
         "eval/create_folder/psnr": _series([1, 450], [30.2, 31.31]),
         "eval/rare/success": _series([1, 450], [1.0, 1.0])}
    lines = eval_summary(m)
    assert lines[0] == "  evaluation, first -> last (steps 1 -> 450):"
    assert "    create_folder: psnr 30.2 -> 31.31, success 67% -> 100%" in lines
    assert "    rare: success 100% -> 100%" in lines
    assert eval_summary({"loss": m["loss"]}) == []


def _state(metrics: dict[str, dict[str, list]], **extra: object) -> dict:
    return {"metric_keys": sorted(metrics), "branches": {"main": {"created_at": 0}}, "metrics": {"main": metrics},
            **extra}


def test_a_plot_of_one_point_shows_it_and_says_its_value() -> None:
    dash = Dashboard(client=None)
    dash.state = state = _state({"eval/loss": _series([1], [2.3456]), "loss": _series(list(range(1, 101)), [1.0] * 100)})
    figs = dash.figures(state, View(smoothing=0.6))
    (line,) = [t for t in figs["eval"]["data"] if t.get("showlegend") is not False]
    assert line["mode"] == "lines+markers" and line["marker"]["size"] > 0  # a line of one point draws nothing
    assert line["name"] == "main = 2.346"
    assert "2.346 at step 1" in figs["eval"]["layout"]["title"]["subtitle"]["text"]
    # a dense series is a plain line, its title has no value
    (loss,) = [t for t in figs["loss"]["data"] if t.get("showlegend") is not False]
    assert loss["mode"] == "lines" and loss["name"] == "main"
    assert "subtitle" not in figs["loss"]["layout"]["title"]


def test_the_eval_plot_says_when_the_next_evaluation_is_due() -> None:
    dash = Dashboard(client=None)
    status = {"step": 120, "branch": "main", "frontend": "trainer"}
    dash.state = state = _state({"eval/loss": _series([1, 100], [2.0, 1.5])}, status=status, eval_every=100,
                                snapshot={"frontend": "trainer", "unsupported": {}})
    title = dash.figures(state, View())["eval"]["layout"]["title"]["subtitle"]["text"]
    assert "next at step 200 (every 100)" in title
    dash.state = state = _state({}, status={**status, "frontend": "hf"}, eval_every=None,
                                snapshot={"frontend": "hf", "unsupported": {}})
    fig = dash.figures(state, View())["eval"]
    assert "eval_strategy" in fig["layout"]["title"]["subtitle"]["text"] and "eval_every" not in fig["layout"]["annotations"][0]["text"]
    dash.state = state = _state({}, status=status, snapshot={"frontend": "loop", "unsupported": {"evaluate": "no evaluate fn"}})
    fig = dash.figures(state, View())["eval"]
    assert "no evaluation: no evaluate fn" in fig["layout"]["title"]["subtitle"]["text"]
    assert "press 'evaluate'" not in fig["layout"]["annotations"][0]["text"]


def test_a_constant_series_is_drawn_at_its_value_not_at_zero() -> None:
    dash = Dashboard(client=None)
    dash.state = state = _state({"lr": _series([1, 2, 3], [1e-3, 1e-3, 1e-3])})
    assert dash.figures(state, View())["lr"]["layout"]["yaxis"]["range"] == [0.0005, 0.0015]
    assert dash.figures(state, View(log_y=True))["lr"]["layout"]["yaxis"]["range"] == [-3.5, -2.5]
