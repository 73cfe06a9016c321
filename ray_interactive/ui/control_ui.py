"""The control UI: a Gradio app that watches and steers a run (or shows a finished one).

    ray-interactive ui RUN [--host 127.0.0.1] [--port 7860] [--auth-file FILE]

Every control is a named endpoint (``api_name``), so a script or an agent can do exactly
what the UI does with ``gradio_client.Client(url, auth=...)``; the README lists them.
It binds to 127.0.0.1 unless told otherwise, and refuses any other address without a
username and password. Gradio's monitoring page is off.

Lists a person picks from (checkpoints, modules, pending commands, metric keys) change
only when they ask (↻) or after their own action, never under an open selection.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
from gradio.components.plot import PlotData  # noqa: E402

from ray_interactive.ui.access import LOCAL_HOSTS, check_bind, parse_auth  # noqa: E402,F401 - re-exported
from ray_interactive.ui.agents_panel import POLICIES, AgentPanel, journal_table, lookahead_figure  # noqa: E402
from ray_interactive.ui.capabilities import READ_ONLY_WHY, Capabilities  # noqa: E402
from ray_interactive.ui.dashboard import PANELS, Dashboard, View  # noqa: E402

SIMPLE_ACTIONS = ("pause", "resume", "stop", "evaluate", "publish_weights")
CSS = """
#history table th, #branch-table table th, #ckpt-table table th { white-space: nowrap; }
#status { font-size: 1.05em; }
"""


def build_ui(dash: Dashboard, run: str, refresh_s: float = 1.5, agents: AgentPanel | None = None) -> gr.Blocks:
    """The Blocks app for one run (not launched)."""
    agents = agents or AgentPanel(dash.client)
    with gr.Blocks(title=f"ray_interactive · {run}") as ui:
        gr.Markdown(f"### ray_interactive · `{run}`")
        status = gr.Markdown("connecting ...", elem_id="status")
        caps_line = gr.Markdown("", elem_id="caps")  # the front-end, and what is not offered here and why
        caps_key = gr.State(None)  # what this page last offered: controls change only when it does

        with gr.Row():
            x_axis = gr.Radio(["step", "time"], value="step", label="x axis", scale=1)
            smoothing = gr.Slider(0.0, 0.99, value=0.6, step=0.01, label="smoothing (raw line stays, paler)", scale=2)
            log_y = gr.Checkbox(value=False, label="log y", scale=1)
            x_min = gr.Number(value=None, label="steps from (0: the start)", scale=1, elem_id="x-min")
            x_max = gr.Number(value=None, label="steps to (0: the end)", scale=1, elem_id="x-max")
            reset_zoom = gr.Button("all steps", scale=1)
            eval_metric = gr.Dropdown(choices=[], value=None, label="eval plot: metric (one line per task)",
                                      allow_custom_value=True, scale=1, elem_id="eval-metric")
        gr.Markdown(
            "Drag across a plot to zoom, double-click to see it all; hover for every branch's value; click a "
            "branch in a legend to hide it. *steps from / to* fetch that range in full detail."
        )

        plots: dict[str, gr.Plot] = {}
        fixed = list(PANELS)  # three to a row; the "custom" plot sits beside the branches
        for i in range(0, len(fixed), 3):
            with gr.Row():
                for name in fixed[i : i + 3]:
                    with gr.Column():
                        plots[name] = gr.Plot(show_label=False, elem_id=f"plot-{name}")
        with gr.Row():
            with gr.Column(scale=1):
                custom_key = gr.Dropdown(choices=[], value=None, label="any logged metric", allow_custom_value=True)
                plots["custom"] = gr.Plot(show_label=False, elem_id="plot-custom")
            with gr.Column(scale=2):
                gr.Markdown("**Branches**")
                tree = gr.Markdown("—", elem_id="branch-tree")
                drawn = gr.Dropdown(choices=[], value=[], multiselect=True, elem_id="draw-branches",
                                    label="also draw (a run of many branches draws its current line and the newest)")
                branch_table = gr.Dataframe(label="branches side by side (latest values)", interactive=False,
                                            elem_id="branch-table")
        history = gr.Dataframe(
            label="Command history (newest first)", interactive=False, wrap=True, elem_id="history",
            column_widths=["4%", "7%", "6%", "12%", "13%", "40%", "18%"],
        )

        refresh_lists = gr.Button("↻ refresh lists (param groups, checkpoints, modules, pending commands, metrics)",
                                  size="sm", elem_id="btn-lists")
        with gr.Tabs():
            with gr.Tab("Optimizer"):
                opt_table = gr.Dataframe(label="live optimizer values", interactive=False)
                with gr.Row():
                    group = gr.Dropdown(choices=["all"], value="all", label="param group", allow_custom_value=True)
                    param = gr.Dropdown(choices=["lr"], value="lr", label="hyperparameter", allow_custom_value=True)
                    value = gr.Textbox(label="new value", placeholder="3e-4, [0.9, 0.95]", elem_id="opt-value")
                    opt_apply = gr.Button("Apply", variant="primary", elem_id="opt-apply")
                opt_msg = gr.Markdown(elem_id="opt-msg")
                with gr.Row():
                    # empty until the run has said what its schedule is (then filled with it)
                    sched_kind = gr.Dropdown(["constant", "linear", "cosine", "step"], value=None, label="lr schedule",
                                             elem_id="sched-kind")
                    sched_steps = gr.Number(value=None, label="over steps", precision=0, elem_id="sched-steps")
                    sched_warmup = gr.Number(value=0, label="warmup steps", precision=0)
                    sched_min = gr.Number(value=0.0, label="min lr ratio")
                    sched_gamma = gr.Number(value=0.1, label="gamma (step)")
                    sched_apply = gr.Button("Set schedule")
                sched_msg = gr.Markdown()
                with gr.Row():
                    clip = gr.Textbox(label="grad clip max norm ('off' for none)", value="", elem_id="clip")
                    clip_apply = gr.Button("Set clipping")
                    accum = gr.Number(value=None, label="grad accumulation steps", precision=0, elem_id="accum")
                    accum_apply = gr.Button("Set accumulation", elem_id="btn-accum")
                clip_msg = gr.Markdown()

            with gr.Tab("Run & checkpoints"):
                with gr.Row():
                    action_buttons = {a: gr.Button(a.replace("_", " "), elem_id=f"btn-{a}") for a in SIMPLE_ACTIONS}
                run_msg = gr.Markdown(elem_id="run-msg")
                with gr.Row():
                    pending = gr.Dropdown(choices=[], label="pending commands", elem_id="pending-select",
                                          allow_custom_value=True, scale=3)
                    cancel = gr.Button("Cancel it", elem_id="btn-cancel", scale=1)
                cancel_msg = gr.Markdown(elem_id="cancel-msg")
                with gr.Row():
                    tag = gr.Textbox(label="checkpoint tag (optional)")
                    save = gr.Button("Save checkpoint", elem_id="btn-save")
                with gr.Row():
                    ckpt = gr.Dropdown(choices=[], label="checkpoint to load (newest first; or pick in the table)",
                                       elem_id="ckpt-select", allow_custom_value=True)
                    new_branch = gr.Textbox(label="new branch name (optional)", elem_id="branch-name")
                    load = gr.Button("Load as new branch", elem_id="btn-load")
                ckpt_msg = gr.Markdown(elem_id="ckpt-msg")
                with gr.Row():
                    newer = gr.Button("◀ newer", size="sm", scale=1)
                    page = gr.Number(value=1, label="page", precision=0, scale=1, elem_id="ckpt-page")
                    older = gr.Button("older ▶", size="sm", scale=1)
                    page_info = gr.Markdown(scale=4)
                ckpt_table = gr.Dataframe(interactive=False, elem_id="ckpt-table", label="checkpoints")

            with gr.Tab("Data") as data_tab:
                sources = gr.Dataframe(label="sources", interactive=False)
                rejections = gr.Dataframe(label="rejected tables (newest first)", interactive=False, wrap=True)
                with gr.Row():
                    mixture = gr.Textbox(label="mixture weights", placeholder="base=0.7 live=0.3", scale=3)
                    mixture_apply = gr.Button("Set mixture", elem_id="btn-mixture", scale=1)
                mixture_msg = gr.Markdown()

            with gr.Tab("Deployment"):
                rollout_line = gr.Markdown(elem_id="rollout-line")
                replicas_table = gr.Dataframe(label="replicas: the weights version each serves", interactive=False,
                                              elem_id="replicas-table")
                rollout_figures = gr.Dataframe(label="the canary judge's figures, per version", interactive=False,
                                               elem_id="rollout-figures")
                with gr.Row():
                    promote = gr.Button("Promote the canary", elem_id="btn-promote")
                    rollback = gr.Button("Roll the canary back", elem_id="btn-rollback")
                    pin_to = gr.Number(label="version", precision=0, elem_id="pin-version")
                    pin = gr.Button("Pin every replica to it", elem_id="btn-pin")
                    unpin = gr.Button("Unpin", elem_id="btn-unpin")
                rollout_msg = gr.Markdown(elem_id="rollout-msg")

            with gr.Tab("Modules"):
                with gr.Row():
                    module = gr.Dropdown(choices=[], label="module", allow_custom_value=True)
                    op = gr.Dropdown(["reset_parameters", "freeze", "unfreeze", "set_attribute"], value="freeze", label="operation")
                    attribute = gr.Textbox(label="attribute (set_attribute)", placeholder="p")
                    attr_value = gr.Textbox(label="value (set_attribute)")
                    module_apply = gr.Button("Apply to module", elem_id="btn-module")
                module_info = gr.JSON(label="module")
                module_msg = gr.Markdown()

            with gr.Tab("Any command"):
                gr.Markdown("Every command kind the run knows, with its arguments as `key=value` (as the CLI's "
                            "`send` takes them); the other tabs are shortcuts for the common ones.")
                with gr.Row():
                    any_kind = gr.Dropdown(choices=Dashboard.kind_choices(), value=None, label="command",
                                           elem_id="any-kind", scale=2)
                    any_args = gr.Textbox(label="arguments (key=value ...)", elem_id="any-args", scale=3)
                    any_send = gr.Button("Send", variant="primary", elem_id="btn-any-send", scale=1)
                any_help = gr.Markdown("pick a command", elem_id="any-help")
                any_msg = gr.Markdown(elem_id="any-msg")

            with gr.Tab("Health"):
                health_kind = gr.Radio(["update_ratio", "grad_norm", "act_std", "dead"], value="update_ratio",
                                       label="per-module indicator (sampled every diagnostics_every steps)",
                                       elem_id="health-kind")
                plots["health"] = gr.Plot(show_label=False, elem_id="plot-health")

            with gr.Tab("Agents"):
                gr.Markdown(
                    "An agent watches the run and acts only through commands (source `agent`, its reason in the "
                    "command's comment), within guardrails: lr ×0.5–×2 per decision and at most the drift factor "
                    "up or down within the window, a rate limit, never resuming a run a person paused; a decision "
                    "that cannot be carried out in full is skipped whole. *rule*: oscillation / divergence / plateau detectors "
                    "(and, if given, update-to-weight ratio ceilings per module). *llm*: a chat "
                    "model picks an action (the local SmolLM2-135M unless an OpenAI-compatible URL is given). "
                    "*llm-check*: the same, but each move is first tried on a branch for the horizon against keeping "
                    "the lr, and kept only if it does better. *lookahead*: tries each lr factor on its own branch "
                    "from the same checkpoint and data position and goes on from the best (every explored branch "
                    "stays in the Branches tab). *mixture*: at each evaluation, moves sampling weight toward the "
                    "tracked sources whose own evaluation lags."
                )
                with gr.Row():
                    agent_policy = gr.Radio(list(POLICIES), value="rule", label="policy", elem_id="agent-policy")
                    agent_every = gr.Number(value=50, label="decide every N steps", precision=0, elem_id="agent-every")
                    agent_interval = gr.Number(value=10, label="at most one command every (s)", elem_id="agent-interval")
                    agent_url = gr.Textbox(label="LLM base URL (optional)", placeholder="http://host:8000/v1", scale=2)
                with gr.Row():
                    agent_drift = gr.Number(value=10, label="lr moves at most this factor ...", elem_id="agent-drift")
                    agent_window = gr.Number(value=500, label="... within this many steps", precision=0,
                                             elem_id="agent-drift-window")
                    agent_horizon = gr.Number(value=50, label="lookahead / llm-check: steps each candidate trains",
                                              precision=0, elem_id="agent-horizon")
                    agent_factors = gr.Textbox(value="0.5 1 2", label="lookahead: lr factors tried",
                                               elem_id="agent-factors")
                    agent_track = gr.Textbox(label="mixture: SOURCE=METRIC, ... (its own eval metric per source)",
                                             placeholder="base=eval/base/loss, extra=eval/extra/loss", scale=2,
                                             elem_id="agent-track")
                    agent_ceiling = gr.Textbox(label="rule: halve while MODULE's update/weight ratio > RATIO "
                                               "(optional; needs health sampling)",
                                               placeholder="transformer.h.0=0.008", elem_id="agent-ceiling")
                with gr.Row():
                    agent_start = gr.Button("Start agent", variant="primary", elem_id="btn-agent-start")
                    agent_stop = gr.Button("Stop agent", elem_id="btn-agent-stop")
                agent_msg = gr.Markdown(elem_id="agent-msg")
                agent_status = gr.Markdown(elem_id="agent-status")
                journal = gr.Dataframe(label="agent journal (newest first): what each agent decided, why, and what "
                                       "it sent or was refused", interactive=False, wrap=True, elem_id="agent-journal")
                lookahead_plot = gr.Plot(show_label=False, elem_id="plot-lookahead")

        # -- refresh -------------------------------------------------------------------
        view_inputs = [x_axis, smoothing, log_y, x_min, x_max, custom_key, health_kind, eval_metric, drawn]
        view_outputs = [status, *plots.values(), tree, branch_table, history, opt_table, sources, rejections,
                        journal, lookahead_plot, agent_status, rollout_line, replicas_table, rollout_figures]

        def refresh(xa: str, sm: float, ly: bool, lo: float | None, hi: float | None, key: str | None,
                    hk: str | None, em: str | None = None, br: list[str] | None = None) -> list[Any]:
            view = View(xa or "step", float(sm or 0.0), bool(ly), lo, hi, key or None, hk or "update_ratio", em or None,
                        tuple(br or ()))
            try:
                state = dash.fetch(view)
            except Exception as e:  # noqa: BLE001 - the run may be gone: say so, keep the rest
                return [f"**RUN UNREACHABLE**: {str(e).splitlines()[0][:300]}"] + [gr.skip()] * (len(view_outputs) - 1)
            figures = dash.figures(state, view)
            data = _safe(lambda: dash.data_tables(state), (None, None))
            return [
                dash.status_markdown(state),
                *[PlotData(type="plotly", plot=json.dumps(figures[name])) for name in plots],
                dash.branch_tree(state),
                dash.branch_table(state),
                dash.history(state),
                dash.optimizer_table(state),
                data[0] if data[0] is not None else gr.skip(),
                data[1] if data[1] is not None else gr.skip(),
                _safe(lambda: journal_table(dash.run_dir), gr.skip()),
                _safe(lambda: PlotData(type="plotly", plot=json.dumps(lookahead_figure(dash.run_dir))), gr.skip()),
                agents.status(),
                *_safe(lambda: dash.deployment(state), (gr.skip(), gr.skip(), gr.skip())),
            ]

        # -- what the run's front-end offers: controls of kinds it refuses are off (the line
        # above says why), a finished run's all of them; forms start from the run's settings
        controls: dict[Any, str | None] = {  # a control -> the command kind it sends (None: any)
            value: "update_optimizer", opt_apply: "update_optimizer", sched_apply: "set_lr_schedule",
            clip: "set_grad_clip", clip_apply: "set_grad_clip", accum: "set_grad_accumulation",
            accum_apply: "set_grad_accumulation", cancel: "cancel", save: "save_checkpoint",
            load: "load_checkpoint", mixture: "set_data_mixture", mixture_apply: "set_data_mixture",
            module_apply: "update_module", any_args: None, any_send: None, agent_start: None, agent_stop: None,
            promote: "promote_version", rollback: "rollback_version", pin: "pin_version", unpin: "pin_version",
            **{button: action for action, button in action_buttons.items()},
        }
        forms = [sched_kind, sched_steps, sched_warmup, sched_min, sched_gamma]
        caps_outputs = [caps_key, caps_line, plots["freshness"], data_tab, *forms, *controls]

        def offer(last: Any) -> list[Any]:
            caps = dash.capabilities()
            key = caps.key()
            if key == last:
                return [gr.skip()] * len(caps_outputs)
            updates: dict[Any, dict[str, Any]] = {}
            for control, kind in controls.items():
                why = caps.why_not(kind) if kind else (READ_ONLY_WHY if caps.read_only else None)
                updates[control] = {"interactive": why is None}
            for control, filled in _prefill(caps, value, clip, accum).items():
                updates.setdefault(control, {})["value"] = filled
            schedule = caps.schedule_form()
            sched = [gr.skip()] * len(forms)
            if schedule is not None:
                sched = [gr.update(value=schedule[k], interactive=not caps.read_only)
                         for k in ("kind", "steps", "warmup", "min_lr_ratio", "gamma")]
                sched[0] = gr.update(value=schedule["kind"], info=caps.schedule_text(), interactive=not caps.read_only)
            elif caps.snapshot.get("schedule"):  # the Trainer's own: no form of ours says it
                sched[0] = gr.update(value=None, info=caps.schedule_text())
            hide = caps.own_data  # the loop reads its own data: no sources, no freshness ("hidden": a tab's button too)
            return [key, caps.markdown(), gr.update(visible=not hide), gr.update(visible="hidden" if hide else True),
                    *sched, *[gr.update(**updates[c]) for c in controls]]

        timer = gr.Timer(refresh_s)
        timer.tick(refresh, view_inputs, view_outputs, api_name="refresh", show_progress="hidden").then(
            offer, caps_key, caps_outputs, api_name=False, show_progress="hidden")
        ui.load(refresh, view_inputs, view_outputs, show_progress="hidden").then(
            offer, caps_key, caps_outputs, api_name=False, show_progress="hidden")
        for control in (x_axis, log_y, x_min, x_max, custom_key, health_kind, eval_metric, drawn):
            control.change(refresh, view_inputs, view_outputs, show_progress="hidden", api_name=False)
        smoothing.release(refresh, view_inputs, view_outputs, show_progress="hidden", api_name=False)
        reset_zoom.click(lambda: (None, None), None, [x_min, x_max], api_name=False)

        # -- lists: on load, on ↻ and after the person's own changes, never on a timer ---
        def choices() -> list[Any]:
            s = _safe(dash.settings, None)
            if s is None:
                return [gr.skip()] * 8
            return [
                gr.update(choices=["all", *s["groups"]]),
                gr.update(choices=s["params"] or ["lr"]),
                gr.update(choices=s["checkpoints"]),
                gr.update(choices=sorted(s["modules"])),
                gr.update(choices=dash.metric_keys()),
                gr.update(choices=s["pending"], value=None),
                gr.update(choices=dash.eval_metrics()),
                gr.update(choices=sorted(_safe(dash.client.branches, {}))),
            ]

        choice_outputs = [group, param, ckpt, module, custom_key, pending, eval_metric, drawn]
        ui.load(choices, None, choice_outputs, show_progress="hidden")

        def show_page(p: Any) -> tuple[Any, Any, Any]:
            return _safe(lambda: dash.checkpoint_page(p), (gr.skip(), "checkpoints unavailable", gr.skip()))

        page_outputs = [ckpt_table, page_info, page]
        ui.load(show_page, page, page_outputs, show_progress="hidden")
        page.submit(show_page, page, page_outputs, api_name="checkpoints", show_progress="hidden")
        newer.click(lambda p: show_page(max(1, int(p or 1) - 1)), page, page_outputs, api_name=False)
        older.click(lambda p: show_page(int(p or 1) + 1), page, page_outputs, api_name=False)

        def pick(evt: gr.SelectData) -> Any:
            row = getattr(evt, "row_value", None)
            return row[0] if row else gr.skip()

        ckpt_table.select(pick, None, ckpt, api_name=False)
        refresh_lists.click(choices, None, choice_outputs, api_name="choices", show_progress="hidden").then(
            show_page, page, page_outputs, api_name=False
        )

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
        cancel.click(dash.cancel, pending, cancel_msg, api_name="cancel").then(choices, None, choice_outputs, api_name=False)
        save.click(dash.save_checkpoint, tag, ckpt_msg, api_name="save_checkpoint").then(
            choices, None, choice_outputs, api_name=False
        ).then(show_page, page, page_outputs, api_name=False)
        load.click(dash.load_checkpoint, [ckpt, new_branch], ckpt_msg, api_name="load_checkpoint")
        mixture_apply.click(dash.set_mixture, mixture, mixture_msg, api_name="set_data_mixture")
        promote.click(lambda: dash.simple("promote_version"), None, rollout_msg, api_name="promote_version")
        rollback.click(lambda: dash.simple("rollback_version"), None, rollout_msg, api_name="rollback_version")
        pin.click(dash.pin_version, pin_to, rollout_msg, api_name="pin_version")
        unpin.click(lambda: dash.pin_version(None), None, rollout_msg, api_name="unpin_version")
        def pick_kind(kind: str | None) -> tuple[str, Any]:
            text, example = Dashboard.kind_help(kind)
            return text, gr.update(value="", placeholder=f"e.g. {example}" if example else "no arguments")

        any_kind.change(pick_kind, any_kind, [any_help, any_args], api_name=False, show_progress="hidden")
        any_send.click(dash.send_any, [any_kind, any_args], any_msg, api_name="send_command")
        any_args.submit(dash.send_any, [any_kind, any_args], any_msg, api_name=False)
        module_apply.click(dash.update_module, [module, op, attribute, attr_value], module_msg, api_name="update_module")
        module.change(lambda m: _safe(lambda: dash.module_info(m), None), module, module_info, api_name=False)
        agent_start.click(agents.start, [agent_policy, agent_every, agent_interval, agent_url, agent_drift,
                                         agent_window, agent_horizon, agent_factors, agent_track, agent_ceiling],
                          agent_msg,
                          api_name="start_agent")
        agent_stop.click(agents.stop, agent_policy, agent_msg, api_name="stop_agent")
    return ui


def _prefill(caps: Capabilities, lr: Any, clip: Any, accum: Any) -> dict[Any, Any]:
    """The optimizer forms' values from the run's own settings (none before it said them)."""
    snap = caps.snapshot
    if not snap:
        return {}
    out: dict[Any, Any] = {clip: "off" if snap.get("grad_clip") is None else f"{snap['grad_clip']:g}",
                           accum: snap.get("grad_accumulation")}
    if (first := caps.first_lr()) is not None:
        out[lr] = f"{first:.6g}"
    return out


def _safe(fn: Any, default: Any) -> Any:
    """The UI keeps refreshing even if one query fails (the run may be ending)."""
    try:
        return fn()
    except Exception:  # noqa: BLE001
        return default


def lost_server_js(run_dir: str | None) -> str:
    """A script for the page: once the process serving it is gone (the run ended and its
    driver exited), a banner says so and how to reopen the run, instead of Gradio's
    bare "connection lost"."""
    reopen = f" Reopen it read-only: ray-interactive ui {run_dir}" if run_dir else ""
    note = json.dumps(f"This run's UI server has stopped: the run has ended (or its process exited).{reopen}")
    return f"""() => {{
  const note = {note};
  let failures = 0;
  setInterval(async () => {{
    try {{
      const base = window.location.pathname.replace(/\\/$/, "");
      const r = await fetch(base + "/gradio_api/info", {{credentials: "same-origin", cache: "no-store"}});
      failures = (r.ok || r.status === 401) ? 0 : failures + 1;
    }} catch (e) {{ failures += 1; }}
    let banner = document.getElementById("ri-stopped");
    if (failures >= 2 && !banner) {{
      banner = document.createElement("div");
      banner.id = "ri-stopped";
      banner.textContent = note;
      banner.style.cssText = "position:fixed;top:0;left:0;right:0;z-index:10000;padding:12px;background:#fff3cd;" +
        "color:#664d03;font:15px sans-serif;border-bottom:2px solid #e0b000;text-align:center";
      document.body.appendChild(banner);
    }} else if (failures === 0 && banner) {{ banner.remove(); }}
  }}, 3000);
}}"""


def control_blocks(client: Any, refresh_s: float = 1.5, command_wait_s: float = 5.0) -> gr.Blocks:
    """The control UI's page for ``client``'s run (a live client or a finished run), not launched."""
    return build_ui(Dashboard(client, command_wait_s=command_wait_s), client.run, refresh_s)


def launch_options(client: Any) -> dict[str, Any]:
    """What the page needs from ``launch()``: its style, and the script that says when the run's server is gone."""
    run_dir = _safe(lambda: client.status().get("run_dir"), None)
    return {"css": CSS, "js": lost_server_js(run_dir), "enable_monitoring": False, "share": False}


def serve_control_ui(
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
    ui = control_blocks(client, refresh_s, command_wait_s)
    ui.queue(default_concurrency_limit=8)
    _, url, _ = ui.launch(
        server_name=host,
        server_port=port,
        auth=[auth] if auth else None,
        prevent_thread_lock=not block,
        quiet=True,
        show_error=False,
        **launch_options(client),
    )
    return ui, url
