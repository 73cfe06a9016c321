"""The deployed NeuralOS demo (Gradio): click on the generated screen, type, press enter.

    python apps/neuralos_demo.py          # the base model on its own (no run, nothing logged)
    gradio apps/neuralos_demo.py          # the same, reloaded as you edit this file

``make demo`` (:mod:`neuralos_example.main`) serves it for a run: what users do is logged to
the run's buffer and the model follows the weights the trainer publishes.

The screen is the model's own frame, upscaled. A click on it is a left click, a right click or a
plain move at that pixel (the radio picks); "Type" sends one key action per character; "Enter"
an enter at the cursor. The model version being served is shown and refreshed as new weights
arrive. "Compare with the base model" shows, beside the screen, the frame the base model (version
0, never finetuned) draws for the same actions from its own previous frame, so the person using
the demo sees what the deployment learned. Programs (the simulated users) use the same engine
through named API endpoints: ``/new_session``, ``/act`` and ``/compare`` (see
:mod:`neuralos_example.users`) and ``/info``.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import base64  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402

import ray_interactive as ri  # noqa: E402
from neuralos_example.data import TASKS, encode_png  # noqa: E402
from neuralos_example.engine import DemoEngine  # noqa: E402
from neuralos_example.model import SAMPLER_STEPS  # noqa: E402

SCALE = 6  # 64 px -> 384 px on screen
CLICK_KINDS = {"left click": "left_click", "right click": "right_click", "move": "move"}


def png64(frame: np.ndarray) -> str:
    """A frame as base64 PNG text (what the API returns)."""
    return base64.b64encode(encode_png(frame)).decode()


def upscale(frame: np.ndarray, scale: int = SCALE) -> np.ndarray:
    return frame.repeat(scale, axis=0).repeat(scale, axis=1)


def _version_text(engine: DemoEngine) -> str:
    v = engine.version
    return f"**model version {v}**" + (" (the base model)" if v == 0 else " (finetuned on what users did)")


def _info_text(res: dict[str, Any]) -> str:
    return f"step {res['step']} · {res['latency_ms']:.0f} ms · {res['steps']} DDIM steps"


def build_demo(engine: DemoEngine, version_refresh_s: float = 2.0) -> gr.Blocks:
    with gr.Blocks(title="NeuralOS (miniature)") as demo:
        gr.Markdown(
            "## A miniature NeuralOS\nEvery frame below is drawn by a diffusion model from the previous frame and "
            "your action; nothing is rendered by a real desktop. What you do is logged, replayed in a simulator "
            "to learn what should have happened, and the model is finetuned on it while you use it."
        )
        session = gr.State(None)
        can_compare = engine.base_predictor is not None
        with gr.Row():
            screen = gr.Image(
                value=upscale(engine.first_frame), interactive=False, label="the model now (click here)", elem_id="screen",
                height=64 * SCALE, width=64 * SCALE, buttons=[],
            )
            base_screen = gr.Image(
                value=None, interactive=False, label="the base model (version 0), same actions", elem_id="base-screen",
                height=64 * SCALE, width=64 * SCALE, buttons=[], visible=False,
            )
            with gr.Column():
                version = gr.Markdown(_version_text(engine), elem_id="version")
                info = gr.Markdown("click on the screen to start", elem_id="info")
                click_kind = gr.Radio(list(CLICK_KINDS), value="left click", label="a click on the screen does")
                with gr.Row():
                    text = gr.Textbox(label="type (a-z, 0-9)", max_lines=1, elem_id="type-text")
                    type_btn = gr.Button("Type", elem_id="type")
                    enter_btn = gr.Button("Enter", elem_id="enter")
                steps = gr.Dropdown(list(SAMPLER_STEPS), value=engine.predictor.steps, label="DDIM steps (speed vs quality)")
                task = gr.Dropdown(["", *TASKS], value="", label="what are you doing? (optional: tags the data)")
                compare = gr.Checkbox(False, label="compare with the base model, side by side", elem_id="compare",
                                      visible=can_compare)
                new_btn = gr.Button("New session", elem_id="new-session")

        def _ensure(sid: str | None, task_name: str, comparing: bool = False) -> str:
            if sid is not None and sid in engine.evicted:
                gr.Warning("Your session had been idle too long and was closed to make room; this is a new one.")
            if sid is None or sid not in engine.sessions:
                sid = engine.new_session(task_name or None).id
                if comparing and can_compare:
                    engine.compare(sid, True)
            return sid

        def _do(sid: str | None, task_name: str, n_steps: int, actions: list[tuple[Any, Any, str, str | None]],
                comparing: bool = False) -> tuple[Any, ...]:
            sid = _ensure(sid, task_name, comparing)
            res: dict[str, Any] | None = None
            try:
                for x, y, ev, key in actions:
                    res = engine.act(sid, x, y, ev, key, int(n_steps), task_name or None)
            except ValueError as e:
                raise gr.Error(str(e)) from None
            if res is None:
                return gr.skip(), sid, _version_text(engine), gr.skip(), gr.skip()
            base = upscale(res["base_frame"]) if res.get("base_frame") is not None else gr.skip()
            return upscale(res["frame"]), sid, _version_text(engine), _info_text(res), base

        def on_click(sid: str | None, kind: str, n_steps: int, task_name: str, comparing: bool, evt: gr.SelectData) -> tuple[Any, ...]:
            x, y = (int(v) // SCALE for v in evt.index)
            return _do(sid, task_name, n_steps, [(x, y, CLICK_KINDS[kind], None)], comparing)

        def on_type(sid: str | None, chars: str, n_steps: int, task_name: str, comparing: bool) -> tuple[Any, ...]:
            chars = (chars or "").strip().lower()
            bad = sorted({c for c in chars if not (c.isascii() and c.isalnum())})
            if bad:
                raise gr.Error(f"only a-z and 0-9 can be typed, not {''.join(bad)!r}")
            return _do(sid, task_name, n_steps, [(None, None, "key", c) for c in chars], comparing)

        def on_enter(sid: str | None, n_steps: int, task_name: str, comparing: bool) -> tuple[Any, ...]:
            return _do(sid, task_name, n_steps, [(None, None, "enter", None)], comparing)

        def on_new(task_name: str, comparing: bool) -> tuple[Any, ...]:
            sid = engine.new_session(task_name or None).id
            base = gr.skip()
            if comparing and can_compare:
                base = upscale(engine.compare(sid, True))  # type: ignore[arg-type]
            return upscale(engine.first_frame), sid, _version_text(engine), "new session: click on the screen", base

        def on_compare(sid: str | None, task_name: str, comparing: bool) -> tuple[Any, Any]:
            sid = _ensure(sid, task_name)
            try:
                frame = engine.compare(sid, bool(comparing))
            except ValueError as e:
                raise gr.Error(str(e)) from None
            return gr.update(visible=frame is not None, value=upscale(frame) if frame is not None else None), sid

        outs = [screen, session, version, info, base_screen]
        screen.select(on_click, [session, click_kind, steps, task, compare], outs, api_visibility="private")
        type_btn.click(on_type, [session, text, steps, task, compare], outs, api_visibility="private").then(lambda: "", None, text)
        text.submit(on_type, [session, text, steps, task, compare], outs, api_visibility="private").then(lambda: "", None, text)
        enter_btn.click(on_enter, [session, steps, task, compare], outs, api_visibility="private")
        new_btn.click(on_new, [task, compare], outs, api_visibility="private")
        compare.change(on_compare, [session, task, compare], [base_screen, session], api_visibility="private")
        gr.Timer(version_refresh_s).tick(lambda: _version_text(engine), None, version, api_visibility="private", show_progress="hidden")

        # -- the programmatic API (simulated users, scripts) ---------------------------------------
        def new_session(task: str = "", seed: int | None = None) -> dict[str, Any]:
            """Start a session on the desktop's first frame; ``seed`` fixes the simulator replay."""
            try:
                s = engine.new_session(task or None, seed)
            except ValueError as e:
                raise gr.Error(str(e)) from None
            return {"session": s.id, "seed": s.seed, "step": 0, "version": engine.version,
                    "frame_png": png64(s.frame)}

        def act(session: str, x: int, y: int, event: str, key: str = "", steps: int = 0, task: str = "") -> dict[str, Any]:
            """One action at screen pixel (x, y) (64x64 frame coordinates); returns the next frame as PNG (base64).
            ``task`` (optional) tags this and later actions of the session with what the user is doing."""
            try:
                res = engine.act(session, int(x), int(y), event, key or None, int(steps) or None, task or None)
            except (ValueError, TypeError) as e:
                raise gr.Error(str(e)) from None
            out = {"session": session, "step": res["step"], "version": res["version"],
                   "latency_ms": res["latency_ms"], "frame_png": png64(res["frame"])}
            if res.get("base_frame") is not None:
                out["base_frame_png"] = png64(res["base_frame"])
            return out

        def compare_api(session: str, on: bool = True) -> dict[str, Any]:
            """Turn the base model's side-by-side frame on or off for a session; while on, ``/act``
            returns ``base_frame_png`` too (the base model's frame after the same actions)."""
            try:
                frame = engine.compare(session, bool(on))
            except ValueError as e:
                raise gr.Error(str(e)) from None
            return {"session": session, "comparing": frame is not None,
                    "base_frame_png": png64(frame) if frame is not None else None}

        def info_api() -> dict[str, Any]:
            """The served model version, sampler settings, open sessions (and how many were evicted),
            and how many frame batches of each size were sampled (concurrent sessions share one)."""
            return {"version": engine.version, "sessions": len(engine.sessions), "sessions_evicted": engine.evictions,
                    "max_sessions": engine.max_sessions, "steps": engine.predictor.steps, "sampler_steps": list(SAMPLER_STEPS),
                    "frame_batches": {str(k): v for k, v in sorted(engine.batch_sizes.items())}}

        gr.api(new_session, api_name="new_session")
        gr.api(act, api_name="act")
        gr.api(compare_api, api_name="compare")
        gr.api(info_api, api_name="info")
    return demo


def serve_demo(
    engine: DemoEngine,
    host: str = "127.0.0.1",
    port: int | None = None,
    block: bool = False,
    auth: tuple[str, str] | None = None,
) -> tuple[gr.Blocks, str]:
    """Launch the demo (threads of this process); returns the app and its URL.

    The control UI's rule (``ri.check_bind``): loopback only, unless a login is given;
    any other ``host`` without ``auth`` is refused before anything is served."""
    ri.check_bind(host, auth, "the NeuralOS demo")
    demo = build_demo(engine)
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(
        server_name=host, server_port=port, prevent_thread_lock=not block, enable_monitoring=False,
        share=False, quiet=True, show_error=True, auth=[auth] if auth else None,
    )
    return demo, url


def standalone_demo() -> gr.Blocks:
    """The demo of the shipped base model, with no run behind it: nothing is logged and the
    weights never change (what ``python apps/neuralos_demo.py`` serves)."""
    import copy

    from neuralos_example.model import BASE_CHECKPOINT, DEFAULT_STEPS, load_model

    model = load_model(BASE_CHECKPOINT)
    engine = DemoEngine(model, None, DEFAULT_STEPS, base_model=copy.deepcopy(model))
    return build_demo(engine)


def __getattr__(name: str) -> Any:
    if name == "demo":  # built on first use: importing this module builds nothing
        return standalone_demo()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__" or os.environ.get("GRADIO_WATCH_DEMO_PATH"):  # run as a script, or by `gradio` (reload)
    demo = standalone_demo()
    if __name__ == "__main__":
        demo.queue(default_concurrency_limit=4).launch(enable_monitoring=False, share=False)
