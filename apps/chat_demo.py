"""The deployed chat (Gradio): ask, and when an answer is wrong, type the right one.

    python apps/chat_demo.py          # the base model on its own (no run, nothing logged)
    gradio apps/chat_demo.py          # the same, reloaded as you edit this file

``make demo-chat`` (``apps/chat_loop.py``) serves it for a run: every exchange is logged to
the run's buffer, corrections and approved answers are what the trainer learns from, and the
model follows the adapter versions the trainer publishes; each answer names the version that
drew it. Programs (the simulated users) use the same engine through named API endpoints:
``/ask`` (question -> exchange), ``/correct`` (exchange id, right answer), ``/approve``
(exchange id) and ``/info``.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

import ray_interactive as ri  # noqa: E402


def _version_text(version: int) -> str:
    return f"**serving adapter version {version}**" + (" (the base model)" if version == 0 else
                                                         " (finetuned on users' corrections)")


def build_demo(engine: Any, version_refresh_s: float = 2.0) -> gr.Blocks:
    """The chat page and its API over ``engine`` (a ``ri.chat.ChatEngine``)."""
    with gr.Blocks(title="A chat that learns from corrections") as demo:
        gr.Markdown(
            "## A support chat that learns from you\nAsk about the **Orbit Q3** robot vacuum (a made-up product: "
            "the model cannot know its facts). When an answer is wrong, type the right one and press *Correct it*; "
            "when it is right, press *Right*. A trainer beside this page learns from what you teach it, and the "
            "page serves each new version of the model as it comes.")
        version = gr.Markdown(_version_text(engine.version()), elem_id="version")
        chat = gr.Chatbot(label="chat", elem_id="chat", height=380)
        last = gr.State(None)  # the id of the last exchange: what the feedback buttons judge
        with gr.Row():
            question = gr.Textbox(label="your question", elem_id="question", scale=4, max_lines=3)
            ask_btn = gr.Button("Ask", elem_id="ask", variant="primary", scale=1)
        with gr.Row():
            correction = gr.Textbox(label="wrong? the right answer", elem_id="correction", scale=4, max_lines=3)
            correct_btn = gr.Button("Correct it", elem_id="correct", scale=1)
            approve_btn = gr.Button("Right", elem_id="approve", scale=1)
        status = gr.Markdown("", elem_id="status")

        def on_ask(text: str, history: list[dict[str, Any]] | None) -> tuple[Any, ...]:
            try:
                ex = engine.ask(text)
            except ValueError as e:
                raise gr.Error(str(e)) from None
            history = [*(history or []), {"role": "user", "content": ex.prompt},
                       {"role": "assistant", "content": f"{ex.answer}\n\n*(version {ex.version})*"}]
            return history, ex.id, "", _version_text(ex.version), f"answered in {ex.latency_ms:.0f} ms"

        def on_correct(exchange_id: str | None, text: str) -> tuple[Any, ...]:
            if exchange_id is None:
                raise gr.Error("ask something first: a correction is of the last answer")
            try:
                engine.correct(exchange_id, text)
            except ValueError as e:
                raise gr.Error(str(e)) from None
            return "", "thanks: the correction is logged and the trainer learns from it"

        def on_approve(exchange_id: str | None) -> str:
            if exchange_id is None:
                raise gr.Error("ask something first")
            try:
                engine.approve(exchange_id)
            except ValueError as e:
                raise gr.Error(str(e)) from None
            return "thanks: marked right"

        ask_btn.click(on_ask, [question, chat], [chat, last, question, version, status], api_name=False)
        question.submit(on_ask, [question, chat], [chat, last, question, version, status], api_name=False)
        correct_btn.click(on_correct, [last, correction], [correction, status], api_name=False)
        approve_btn.click(on_approve, [last], [status], api_name=False)
        gr.Timer(version_refresh_s).tick(lambda: _version_text(engine.version()), None, version, api_name=False)

        def ask(question: str) -> dict[str, Any]:
            """Answer a question: ``{id, prompt, answer, version, latency_ms, ...}``."""
            try:
                return engine.ask(question).to_dict()
            except ValueError as e:
                raise gr.Error(str(e)) from None

        def correct(exchange_id: str, correction: str) -> dict[str, Any]:
            """Say the answer of exchange ``exchange_id`` was wrong and what is right."""
            try:
                return engine.correct(exchange_id, correction).to_dict()
            except ValueError as e:
                raise gr.Error(str(e)) from None

        def approve(exchange_id: str) -> dict[str, Any]:
            """Say the answer of exchange ``exchange_id`` was right."""
            try:
                return engine.approve(exchange_id).to_dict()
            except ValueError as e:
                raise gr.Error(str(e)) from None

        def info() -> dict[str, Any]:
            """The version served and the counts (answered, corrected, approved, logged rows)."""
            return engine.info()

        gr.api(ask, api_name="ask")
        gr.api(correct, api_name="correct")
        gr.api(approve, api_name="approve")
        gr.api(info, api_name="info")
    return demo


def launch_demo(engine: Any, host: str = "127.0.0.1", port: int | None = None, block: bool = False,
                auth: tuple[str, str] | None = None) -> tuple[gr.Blocks, str]:
    """Launch the chat (threads of this process); returns the app and its URL. Loopback
    only unless a login is given (``ri.check_bind``)."""
    ri.check_bind(host, auth, "the chat demo")
    demo = build_demo(engine)
    demo.queue(default_concurrency_limit=2)
    _, url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block,
                            enable_monitoring=False, share=False, quiet=True, show_error=True,
                            auth=[auth] if auth else None)
    return demo, url


def standalone_demo(model: str | None = None) -> gr.Blocks:
    """The base model with its adapter untrained: nothing is logged, nothing changes
    (``RI_CHAT_MODEL=tiny``: a small random model, to try the page without the 20 s load)."""
    model = model or os.environ.get("RI_CHAT_MODEL", "smollm2")
    engine = ri.chat.ChatEngine(ri.chat.build_chat_model(model), ri.chat.load_tokenizer())
    return build_demo(engine)


def __getattr__(name: str) -> Any:
    if name == "demo":  # built on first use: importing this module builds nothing
        return standalone_demo()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__" or os.environ.get("GRADIO_WATCH_DEMO_PATH"):  # run as a script, or by `gradio` (reload)
    demo = standalone_demo()
    if __name__ == "__main__":
        demo.queue(default_concurrency_limit=2).launch(enable_monitoring=False, share=False)
