"""What a run's console shows a person: the URLs to open, a status line while it runs (the
demos' main jobs), and its summary at the end (the CLI and the demos print it)."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def prog() -> str:
    """How the user can call this CLI again: the path they used (``.venv/bin/...``)."""
    path = Path(sys.argv[0])
    return str(path) if path.name == "ray-interactive" else "ray-interactive"


def _fmt(metric: str, v: float) -> str:
    return f"{100 * v:.0f}%" if metric == "success" else f"{v:.4g}"


def eval_summary(metrics: dict[str, Any]) -> list[str]:
    """One line per evaluated group (a task's ``eval/<group>/<metric>``; ``eval/<metric>`` is
    "all"): each metric at the first and the last evaluation."""
    groups: dict[str, list[str]] = {}
    steps: tuple[int, int] | None = None
    for key in sorted(k for k in metrics if k.startswith("eval/")):
        d = metrics[key]
        values = [(s, v) for s, v in zip(d.get("step", []), d.get("value", []), strict=False) if v is not None]
        if not values:
            continue
        parts = key.split("/")
        group, metric = (parts[1], parts[2]) if len(parts) == 3 else ("all", parts[-1])
        (s0, first), (s1, last) = values[0], values[-1]
        steps = (s0, s1)
        groups.setdefault(group, []).append(f"{metric} {_fmt(metric, first)} -> {_fmt(metric, last)}")
    if not groups:
        return []
    head = f"  evaluation, first -> last (steps {steps[0]} -> {steps[1]}):" if steps else "  evaluation:"
    return [head] + [f"    {g}: " + ", ".join(v) for g, v in sorted(groups.items(), key=lambda kv: (kv[0] == "all", kv[0]))]


def print_summary(client: Any) -> None:
    """Print where a run ended up: status, the evaluation first -> last (or the loss),
    commands, checkpoints and branches, and how to resume it."""
    status = client.status()
    eval_keys = [k for k in client.metric_keys() if k.startswith("eval/")]
    m = client.metrics(keys=["loss", *eval_keys], include_ancestors=True)
    print(f"\nrun {status['run']}: {status['status']} at step {status['step']} on branch {status['branch']}"
          f" ({status.get('message') or ''})")
    lines = eval_summary(m)
    v = m.get("loss", {}).get("value")
    if v and not lines:  # without an evaluation, the train loss is all there is to show
        print(f"  loss: first {v[0]:.4f}, last {v[-1]:.4f}")
    for line in lines:
        print(line)
    print(f"  commands: {status['commands']}; checkpoints: {status['checkpoints']}; branches: {', '.join(status['branches'])}")
    print(f"  run dir: {status['run_dir']}  (resume: {prog()} run --resume {status['run_dir']})")


def url_banner(urls: dict[str, str], what: dict[str, str]) -> str:
    """The URLs to open, framed (after whatever Ray and Gradio printed while starting), in
    the order of ``what`` (name -> what to do there), the others after."""
    order = list(what)
    names = sorted(urls, key=lambda n: order.index(n) if n in order else len(order))
    heads = [f"  {name}: {urls[name]}" for name in names]
    pad = max(len(h) for h in heads) + 2
    lines = [f"{h:{pad}}<- {what.get(name, '')}" for h, name in zip(heads, names, strict=True)]
    width = max(len(x) for x in lines) + 2
    return "\n".join(["", "=" * width, "  OPEN THESE:", *lines, "=" * width, ""])


def watch_run(handle: Any, duration: float | None, status_line: Callable[[], str], every_s: float = 10.0,
              on_tick: Callable[[], None] | None = None) -> bool:
    """Wait until the run ends, ``duration`` seconds pass (None: no limit) or Ctrl-C, printing
    ``status_line()`` every ``every_s`` and calling ``on_tick()`` about every second (a failure
    of either is logged, not raised). Returns whether Ctrl-C ended it."""
    interrupted: list[bool] = []
    signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    start, last = time.monotonic(), 0.0
    while not interrupted and (duration is None or time.monotonic() - start < duration):
        try:
            if handle.wait(timeout=1.0) is not None:
                break
        except Exception as e:
            print(f"run failed: {e}", file=sys.stderr)
            break
        if on_tick is not None:
            try:
                on_tick()
            except Exception as e:  # the next tick tries again
                log.warning("%s: %s", getattr(on_tick, "__name__", "tick"), e)
        if time.monotonic() - last >= every_s:
            last = time.monotonic()
            try:
                print(status_line(), flush=True)
            except Exception as e:  # a status line is not worth stopping for
                log.warning("status: %s", e)
    return bool(interrupted)
