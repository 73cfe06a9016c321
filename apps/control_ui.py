"""The control UI: a Gradio app that watches and steers a running run.

    ray-interactive ui RUN [--host 127.0.0.1] [--port 7860] [--auth-file FILE]

Every control is a named endpoint (``api_name``), so a script or an agent can do exactly
what the UI does with ``gradio_client.Client(url, auth=...)``; the README lists them.
It binds to 127.0.0.1 unless told otherwise, and refuses any other address without a
username and password. Gradio's monitoring page is off.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from apps.dashboard import Dashboard  # noqa: E402

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TITLES = {
    "loss": "train loss",
    "eval": "eval loss",
    "lr": "learning rate",
    "grad_norm": "grad norm",
    "throughput": "samples / s",
    "freshness": "data freshness (s)",
    "custom": "metric",
}
SIMPLE_ACTIONS = ("pause", "resume", "stop", "evaluate", "publish_weights")


def build_ui(dash: Dashboard, run: str, refresh_s: float = 1.5) -> gr.Blocks:
    """The Blocks app for one run (not launched)."""
    with gr.Blocks(title=f"ray_interactive · {run}") as ui:
        gr.Markdown(f"### ray_interactive · `{run}`")
        status = gr.Markdown("connecting ...", elem_id="status")

        with gr.Row():
            x_axis = gr.Radio(["step", "time"], value="step", label="x axis", scale=1)
            smoothing = gr.Slider(0.0, 0.99, value=0.6, step=0.01, label="smoothing (raw line stays)", scale=2)
            log_y = gr.Checkbox(value=False, label="log10 y", scale=1)
            x_min = gr.Number(value=None, label="zoom from", scale=1, elem_id="x-min")
            x_max = gr.Number(value=None, label="zoom to (not above 'from': all)", scale=1, elem_id="x-max")
            reset_zoom = gr.Button("reset zoom", scale=1)
        gr.Markdown("Drag across a plot to zoom into that range; double-click a plot (or *reset zoom*) to see it all.")

        plots: dict[str, gr.LinePlot] = {}
        names = list(TITLES)
        for i in range(0, len(names), 3):
            with gr.Row():
                for name in names[i : i + 3]:
                    if name == "custom":
                        with gr.Column():
                            custom_key = gr.Dropdown(choices=[], value=None, label="any logged metric", allow_custom_value=True)
                            plots[name] = _plot(name)
                    else:
                        plots[name] = _plot(name)
        with gr.Row():
            with gr.Column(scale=1):
                gr.Markdown("**Branches**")
                tree = gr.Markdown("—", elem_id="branch-tree")
            with gr.Column(scale=3):
                history = gr.Dataframe(label="Command history (newest first)", interactive=False, wrap=True, elem_id="history")

        with gr.Tabs():
            with gr.Tab("Optimizer"):
                opt_table = gr.Dataframe(label="live optimizer values", interactive=False)
                with gr.Row():
                    group = gr.Dropdown(choices=["all"], value="all", label="param group", allow_custom_value=True)
                    param = gr.Dropdown(choices=["lr"], value="lr", label="hyperparameter", allow_custom_value=True)
                    value = gr.Textbox(label="new value", placeholder="e.g. 3e-4 or [0.9, 0.95]", elem_id="opt-value")
                    opt_apply = gr.Button("Apply", variant="primary", elem_id="opt-apply")
                opt_msg = gr.Markdown(elem_id="opt-msg")
                with gr.Row():
                    sched_kind = gr.Dropdown(["constant", "linear", "cosine", "step"], value="cosine", label="lr schedule")
                    sched_steps = gr.Number(value=1000, label="over steps", precision=0)
                    sched_warmup = gr.Number(value=0, label="warmup steps", precision=0)
                    sched_min = gr.Number(value=0.0, label="min lr ratio")
                    sched_gamma = gr.Number(value=0.1, label="gamma (step)")
                    sched_apply = gr.Button("Set schedule")
                sched_msg = gr.Markdown()
                with gr.Row():
                    clip = gr.Textbox(label="grad clip max norm ('off' for none)", value="1.0")
                    clip_apply = gr.Button("Set clipping")
                    accum = gr.Number(value=1, label="grad accumulation steps", precision=0)
                    accum_apply = gr.Button("Set accumulation")
                clip_msg = gr.Markdown()

            with gr.Tab("Run & checkpoints"):
                with gr.Row():
                    action_buttons = {a: gr.Button(a.replace("_", " "), elem_id=f"btn-{a}") for a in SIMPLE_ACTIONS}
                run_msg = gr.Markdown(elem_id="run-msg")
                with gr.Row():
                    tag = gr.Textbox(label="checkpoint tag (optional)")
                    save = gr.Button("Save checkpoint", elem_id="btn-save")
                with gr.Row():
                    ckpt = gr.Dropdown(choices=[], label="checkpoint", elem_id="ckpt-select", allow_custom_value=True)
                    new_branch = gr.Textbox(label="new branch name (optional)", elem_id="branch-name")
                    load = gr.Button("Load as new branch", elem_id="btn-load")
                ckpt_msg = gr.Markdown(elem_id="ckpt-msg")

            with gr.Tab("Data"):
                sources = gr.Dataframe(label="sources", interactive=False)
                rejections = gr.Dataframe(label="rejected tables (newest first)", interactive=False)
                with gr.Row():
                    mixture = gr.Textbox(label="mixture weights", placeholder="base=0.7 live=0.3")
                    mixture_apply = gr.Button("Set mixture")
                mixture_msg = gr.Markdown()

            with gr.Tab("Modules"):
                with gr.Row():
                    module = gr.Dropdown(choices=[], label="module", allow_custom_value=True)
                    op = gr.Dropdown(["reset_parameters", "freeze", "unfreeze", "set_attribute"], value="freeze", label="operation")
                    attribute = gr.Textbox(label="attribute (set_attribute)", placeholder="p")
                    attr_value = gr.Textbox(label="value (set_attribute)")
                    module_apply = gr.Button("Apply to module")
                module_info = gr.JSON(label="module")
                module_msg = gr.Markdown()

        # -- refresh -------------------------------------------------------------------
        view_inputs = [x_axis, smoothing, log_y, x_min, x_max, custom_key]
        view_outputs = [status, *plots.values(), tree, history, opt_table, sources, rejections]

        def _coloured(df: Any) -> Any:
            return gr.LinePlot(value=df, color_map=dash.color_map(list(df["series"].unique())) if len(df) else None)

        def refresh(xa: str, sm: float, ly: bool, lo: float | None, hi: float | None, key: str | None) -> list[Any]:
            frames = _safe(lambda: dash.plot_frames(xa, sm or 0.0, bool(ly), lo, hi, key or None), {})
            data = _safe(dash.data_tables, (None, None))
            return [
                dash.status_markdown(),
                *[_coloured(frames[name]) if name in frames else gr.skip() for name in plots],
                _safe(dash.branch_tree, gr.skip()),
                _safe(dash.history, gr.skip()),
                _safe(dash.optimizer_table, gr.skip()),
                data[0] if data[0] is not None else gr.skip(),
                data[1] if data[1] is not None else gr.skip(),
            ]

        timer = gr.Timer(refresh_s)
        timer.tick(refresh, view_inputs, view_outputs, api_name="refresh", show_progress="hidden")
        ui.load(refresh, view_inputs, view_outputs, show_progress="hidden")
        for control in (x_axis, log_y, x_min, x_max, custom_key):
            control.change(refresh, view_inputs, view_outputs, show_progress="hidden", api_name=False)
        smoothing.release(refresh, view_inputs, view_outputs, show_progress="hidden", api_name=False)

        def choices() -> list[Any]:
            s = _safe(dash.settings, None)
            if s is None:
                return [gr.skip()] * 5
            return [
                gr.update(choices=["all", *s["groups"]]),
                gr.update(choices=s["params"] or ["lr"]),
                gr.update(choices=s["checkpoints"]),
                gr.update(choices=sorted(s["modules"])),
                gr.update(choices=dash.metric_keys()),
            ]

        slow = gr.Timer(max(refresh_s * 3, 4.0))
        choice_outputs = [group, param, ckpt, module, custom_key]
        slow.tick(choices, None, choice_outputs, api_name="choices", show_progress="hidden")
        ui.load(choices, None, choice_outputs, show_progress="hidden")

        # -- zoom ------------------------------------------------------------------------
        def zoom(evt: gr.SelectData) -> tuple[Any, Any]:
            lo, hi = (evt.index if isinstance(evt.index, (list, tuple)) and len(evt.index) == 2 else (None, None))
            return lo, hi

        for p in plots.values():
            p.select(zoom, None, [x_min, x_max], api_name=False)
            p.double_click(lambda: (None, None), None, [x_min, x_max], api_name=False)
        reset_zoom.click(lambda: (None, None), None, [x_min, x_max], api_name=False)

        # -- controls (each one command through the run's API) ---------------------------
        opt_apply.click(dash.update_optimizer, [group, param, value], opt_msg, api_name="update_optimizer")
        value.submit(dash.update_optimizer, [group, param, value], opt_msg, api_name=False)
        sched_apply.click(
            dash.set_schedule, [sched_kind, sched_steps, sched_warmup, sched_min, sched_gamma], sched_msg, api_name="set_lr_schedule"
        )
        clip_apply.click(dash.set_grad_clip, clip, clip_msg, api_name="set_grad_clip")
        accum_apply.click(dash.set_grad_accumulation, accum, clip_msg, api_name="set_grad_accumulation")
        for action, button in action_buttons.items():
            button.click(lambda a=action: dash.simple(a), None, run_msg, api_name=action)
        save.click(dash.save_checkpoint, tag, ckpt_msg, api_name="save_checkpoint")
        load.click(dash.load_checkpoint, [ckpt, new_branch], ckpt_msg, api_name="load_checkpoint")
        mixture_apply.click(dash.set_mixture, mixture, mixture_msg, api_name="set_data_mixture")
        module_apply.click(dash.update_module, [module, op, attribute, attr_value], module_msg, api_name="update_module")
        module.change(lambda m: _safe(lambda: dash.settings()["modules"].get(m), None), module, module_info, api_name=False)
    return ui


def _plot(name: str) -> gr.LinePlot:
    return gr.LinePlot(
        x="x", y="y", color="series", title=TITLES[name], height=240, elem_id=f"plot-{name}", x_title="", y_title=""
    )


def _safe(fn: Any, default: Any) -> Any:
    """The UI keeps refreshing even if one query fails (the run may be ending)."""
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return default


def check_bind(host: str, auth: tuple[str, str] | None) -> None:
    """Refuse to serve beyond this machine without a login."""
    if host not in LOCAL_HOSTS and auth is None:
        raise ValueError(
            f"refusing to bind the UI to {host} without authentication: give --auth-file FILE (one line "
            "user:password) or set RI_UI_AUTH=user:password, or bind to 127.0.0.1"
        )
    if auth is not None and (not auth[0] or len(auth[1]) < 8):
        raise ValueError("the UI password must be at least 8 characters and the user name non-empty")


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    user, sep, password = text.strip().partition(":")
    if not sep:
        raise ValueError("authentication must be given as user:password")
    return user, password


def serve(
    client: Any,
    host: str = "127.0.0.1",
    port: int | None = None,
    auth: tuple[str, str] | None = None,
    block: bool = True,
    refresh_s: float = 1.5,
    command_wait_s: float = 5.0,
) -> tuple[gr.Blocks, str]:
    """Launch the UI for ``client``'s run; returns the app and its local URL."""
    check_bind(host, auth)
    ui = build_ui(Dashboard(client, command_wait_s=command_wait_s), client.run, refresh_s)
    ui.queue(default_concurrency_limit=8)
    _, url, _ = ui.launch(
        server_name=host,
        server_port=port,
        auth=[auth] if auth else None,
        prevent_thread_lock=not block,
        enable_monitoring=False,
        share=False,
        quiet=True,
        show_error=False,
    )
    return ui, url
