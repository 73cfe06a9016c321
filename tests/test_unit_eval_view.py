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
