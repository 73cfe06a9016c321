"""The control UI of a run, as a Gradio app: plots, every command, the history, agents.

    RI_RUN=my-run python apps/control_ui.py         # a running run, attached by name
    RI_RUN=runs/my-run gradio apps/control_ui.py    # a finished run's directory, reloaded as you edit
    ray-interactive ui my-run                       # the same page from the CLI

The page is :func:`ray_interactive.control_blocks` (its logic: ``ray_interactive/ui``); this
file only picks the run. It binds 127.0.0.1: serve it further with ``ray-interactive ui
--ui-host ... --auth-file ...``, which asks for a login.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

import ray_interactive as ri  # noqa: E402


def run_client(run: str | None = None) -> Any:
    """``run`` (default: ``RI_RUN``, else the first command-line argument) - a running run's
    name, or a run directory (read-only) - as a client."""
    run = run or os.environ.get("RI_RUN") or (sys.argv[1] if len(sys.argv) > 1 and __name__ == "__main__" else None)
    if not run:
        raise SystemExit("say which run: RI_RUN=<run name or run directory> python apps/control_ui.py")
    try:
        return ri.attach(run)
    except LookupError as e:
        raise SystemExit(str(e)) from None


def control_demo(run: str | None = None) -> gr.Blocks:
    """The page for ``run`` (see :func:`run_client`)."""
    return ri.control_blocks(run_client(run))


def __getattr__(name: str) -> Any:
    if name == "demo":  # built on first use: importing this module attaches to nothing
        return control_demo()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__" or os.environ.get("GRADIO_WATCH_DEMO_PATH"):  # run as a script, or by `gradio` (reload)
    client = run_client()
    demo = ri.control_blocks(client)
    if __name__ == "__main__":
        demo.queue(default_concurrency_limit=8).launch(server_name="127.0.0.1", **ri.launch_options(client))
