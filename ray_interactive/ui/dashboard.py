"""What the control UI shows and does, as plain methods over a run client.

The Gradio app (:mod:`ray_interactive.ui.control_ui`) is a thin layer over this class: every control is
one method that sends one command through the run's command API and returns a message a
person can read (the rejection reason included). Nothing here raises to the UI: bad
input becomes a message, and the run never sees anything the controller did not accept.

A refresh is one call to the controller (:meth:`RunClient.dashboard`): status, branches,
every branch's thinned series, the newest commands, settings and data figures. Plots are
Plotly figures built as plain JSON (Gradio ships plotly.js): named axes, real log ticks,
hover values of every branch at once, zoom kept across refreshes, a note where a plot
has nothing to show yet. When the run ends, the dashboard goes on reading its run
directory (:class:`~ray_interactive.runtime.offline.FinishedRun`) and says so.
"""

from __future__ import annotations

import json
import math
import textwrap
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from ray_interactive.core.commands import COMMAND_KINDS, CommandRecord, kind_info
from ray_interactive.core.commands.text import payload_from_text
from ray_interactive.runtime.lifecycle import run_is_gone
from ray_interactive.ui.capabilities import Capabilities


@dataclass(frozen=True)
class Panel:
    """One plot: the metric keys it draws and how."""

    keys: tuple[str, ...]
    title: str
    y_title: str
    smooth: bool = True  # a step change (the lr) must stay a step, not become a curve
    shape: str = "linear"  # "hv": drawn as steps
    empty: str = "nothing logged yet"
    label_strip: tuple[str, str] = ("data/", "")  # a key's prefix and suffix left out of its legend label


#: The fixed plots (the "custom" one shows any logged metric a person picks).
PANELS: dict[str, Panel] = {
    "loss": Panel(("loss",), "train loss", "loss"),
    "eval": Panel(("eval/loss",), "eval loss", "eval loss", empty="no evaluation yet"),
    "lr": Panel(("lr",), "learning rate (first param group)", "lr", smooth=False, shape="hv"),
    "grad_norm": Panel(("grad_norm",), "gradient norm (before clipping)", "grad norm"),
    "throughput": Panel(("samples_per_s",), "throughput", "samples / s"),
    "freshness": Panel(
        ("data/freshest_age_s", "data/mean_age_s", "data/first_use_p50_s", "data/first_use_p95_s"),
        "data freshness", "seconds", smooth=False,
        empty="no live rows trained on yet: ingest rows into a live source",
    ),
}
#: One colour per branch (in order of creation); a branch's raw line is a paler shade of it.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
X_TITLES = {"step": "step (optimizer steps)", "time": "wall time (s since the first point)"}
#: A line with at most this many points also draws its points: a sparse series (evaluations)
#: shows each one, and a single point shows at all (a line of one point draws nothing).
SPARSE_POINTS = 30


def _paler(hex_colour: str, amount: float = 0.6) -> str:
    rgb = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in rgb)


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard-style exponential smoothing with bias correction (0 = none)."""
    if weight <= 0 or len(values) == 0:
        return values
    out = np.empty_like(values)
    acc, norm = 0.0, 0.0
    for i, v in enumerate(values):
        if not math.isfinite(v):
            out[i] = v
            continue
        acc = weight * acc + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out[i] = acc / norm
    return out


def _number(text: Any, what: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError(f"{what} must be a number, not {str(text)[:40]!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite")
    return value


def _json_value(text: str) -> Any:
    """``1e-4`` -> 1e-4, ``[0.9, 0.95]`` -> list, ``true`` -> True; anything else: the text."""
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


def _clean(values: list[Any]) -> list[float | None]:
    """JSON numbers; NaN and infinities become gaps (Plotly draws None as a break)."""
    return [v if isinstance(v, (int, float)) and math.isfinite(v) else None for v in values]


def _show_value(value: Any) -> str:
    """A hyperparameter for people: 6 significant digits (``1e-06``, not ``1.0000000000000002e-06``)."""
    if isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show_value(v) for v in value) + "]"
    return json.dumps(value) if not isinstance(value, str) else value


def _shown(point: Any) -> str:
    """A ``[step, value]`` point's value for a table."""
    return f"{point[1]:.4g}" if point else "—"


@dataclass(frozen=True)
class View:
    """How the plots are to be drawn: the refresh inputs."""

    x_axis: str = "step"
    smoothing: float = 0.0
    log_y: bool = False
    x_min: float | None = None
    x_max: float | None = None
    custom: str | None = None
    health: str = "update_ratio"  # which per-module indicator the health plot shows
    eval_metric: str | None = None  # which evaluation metric the eval plot shows (None: loss, or the first)
    branches: tuple[str, ...] = ()  # branches to draw besides the current line and the newest

    @property
    def zoomed(self) -> bool:
        return self.x_min is not None and self.x_max is not None and self.x_max > self.x_min


#: How the status line names a run's front-end (our Trainer needs no label).
FRONTENDS = {"trainer": "", "hf": "Hugging Face Trainer", "loop": "plain PyTorch loop", "ddp": "Ray Train DDP"}


class Dashboard:
    """Reads and steers one run for the UI (and for scripts through its endpoints)."""

    def __init__(self, client: Any, max_points: int = 400, command_wait_s: float = 5.0, history: int = 50) -> None:
        self.client = client
        self.max_points = max_points
        self.command_wait_s = command_wait_s  # how long a control waits for "applied" before answering "accepted"
        self.history_rows = history
        self._run_dir: str | None = None
        self.ended_note: str | None = None  # set once the run's actors are gone and its directory is read
        self.state: dict[str, Any] = {}

    # -- reading ---------------------------------------------------------------------
    @property
    def run_dir(self) -> str | None:
        """The run's directory (known after the first refresh)."""
        return self._run_dir

    @property
    def read_only(self) -> bool:
        return bool(getattr(self.client, "read_only", False))

    def capabilities(self, state: dict[str, Any] | None = None) -> Capabilities:
        """What the run's front-end can do (of the latest refresh unless ``state`` is given)."""
        return Capabilities.of(self.state if state is None else state, read_only=self.read_only)

    def fetch(self, view: View | None = None) -> dict[str, Any]:
        """One round trip: everything a refresh shows (kept in :attr:`state`). If the run's
        controller is gone, the dashboard switches to reading its run directory."""
        view = view or View()
        panels = self._panels(view)
        keys = sorted({k for p in panels.values() for k in p.keys})
        since = until = None
        if view.x_axis == "step" and view.zoomed:
            since, until = int(math.floor(view.x_min)), int(math.ceil(view.x_max))  # type: ignore[arg-type]
        try:
            self.state = self.client.dashboard(keys, since=since, until=until, max_points=self.max_points,
                                               history=self.history_rows, branches=list(view.branches))
        except Exception as e:
            if not (run_is_gone(e) and self._switch_to_run_dir()):
                raise
            self.state = self.client.dashboard(keys, since=since, until=until, max_points=self.max_points,
                                               history=self.history_rows, branches=list(view.branches))
        self._run_dir = self.state.get("status", {}).get("run_dir") or self._run_dir
        return self.state

    def _switch_to_run_dir(self) -> bool:
        """The live run is unreachable: read its directory instead, if it is known."""
        from ray_interactive.runtime.offline import FinishedRun

        if self.read_only or not self._run_dir:
            return False
        try:
            self.client = FinishedRun(self._run_dir)
        except (OSError, ValueError):
            return False
        self.ended_note = f"the run has stopped; this page now shows its run directory {self._run_dir} (read-only)"
        return True

    def status_markdown(self, state: dict[str, Any] | None = None) -> str:
        if state is None:
            try:
                state = self.fetch()
            except Exception as e:  # noqa: BLE001 - the run may be gone; say so
                return f"**RUN UNREACHABLE**: {str(e).splitlines()[0][:300]}"
        s = state.get("status", {})
        status = s.get("status", "?")
        weights = s.get("weights_version")
        parts = [
            f"**{status.upper()}**",
            f"step **{s.get('step', 0)}**",
            f"branch **{s.get('branch')}**",
            f"{s.get('samples_per_s') or 0:.1f} samples/s",
            f"last checkpoint {s.get('last_checkpoint') or '—'}",
            f"weights v{weights}" if weights else "no weights published",
        ]
        frontend = FRONTENDS.get(s.get("frontend") or "trainer")
        if frontend:
            parts.append(frontend)
        line = " · ".join(parts)
        message = s.get("message")
        if message and status in ("paused", "waiting", "failed", "ended", "stopped", "recovering", "stalled"):
            warn = status in ("paused", "waiting", "failed", "ended", "recovering", "stalled")
            line += f"\n\n{'⚠️ ' if warn else ''}{str(message).strip().splitlines()[-1][:400]}"
        if s.get("storage_error"):
            line += f"\n\n⚠️ storage: {str(s['storage_error'])[:400]}"
        if self.ended_note or self.read_only:
            line += f"\n\n*{self.ended_note or 'a finished run, read from its run directory (read-only)'}*"
        return line

    def _branch_order(self, state: dict[str, Any]) -> list[str]:
        branches = state.get("branches", {})
        return sorted(branches, key=lambda b: branches[b].get("created_at", 0))

    def colour(self, state: dict[str, Any], branch: str) -> str:
        order = self._branch_order(state)
        return PALETTE[(order.index(branch) if branch in order else len(order)) % len(PALETTE)]

    def branch_tree(self, state: dict[str, Any]) -> str:
        """The branches as an indented tree: where each forked from."""
        branches = state.get("branches", {})
        children: dict[str | None, list[str]] = {}
        for name, b in branches.items():
            children.setdefault(b.get("parent"), []).append(name)
        lines: list[str] = []

        def walk(parent: str | None, depth: int) -> None:
            for name in sorted(children.get(parent, []), key=lambda n: branches[n].get("created_at", 0)):
                b = branches[name]
                fork = f" ← {b['checkpoint']} (step {b['fork_step']})" if b.get("checkpoint") else ""
                lines.append(f"{'    ' * depth}- `{name}`{fork}")
                walk(name, depth + 1)

        walk(None, 0)
        return "\n".join(lines) or "—"

    def branch_table(self, state: dict[str, Any]) -> pd.DataFrame:
        """Branches side by side: where each forked, how far it got, its latest numbers."""
        rows = []
        for name in self._branch_order(state):
            b = state["branches"][name]
            latest = state.get("latest", {}).get(name, {})  # every branch's, drawn or not: [step, value]
            rows.append({
                "branch": name,
                "forked from": f"{b['checkpoint']}" if b.get("checkpoint") else "—",
                "last step": latest["loss"][0] if "loss" in latest else "—",
                "loss": _shown(latest.get("loss")),
                "eval loss": _shown(latest.get("eval/loss")),
                "lr": _shown(latest.get("lr")),
            })
        return pd.DataFrame(rows, columns=["branch", "forked from", "last step", "loss", "eval loss", "lr"])

    def _panels(self, view: View) -> dict[str, Panel]:
        panels = dict(PANELS)
        panels["custom"] = Panel((view.custom,), view.custom, view.custom) if view.custom else Panel(
            (), "any logged metric", "", empty="pick a metric in the box above (the list refreshes with ↻)"
        )
        keys = tuple(k for k in self.state.get("metric_keys", []) if k.startswith("health/")
                     and k.endswith(f"/{view.health}") and k != "health/skipped_steps")
        caps = self.capabilities()
        panels["eval"] = self._eval_panel(view)
        panels["freshness"] = replace(PANELS["freshness"], empty=caps.freshness_empty())
        panels["health"] = Panel(
            keys, f"per-module {view.health.replace('_', ' ')}", view.health, label_strip=("health/", f"/{view.health}"),
            empty="no per-module health metrics: start the run with diagnostics_every=N "
                  "(e.g. --set diagnostics_every=50)")
        return panels

    def figures(self, state: dict[str, Any], view: View) -> dict[str, dict[str, Any]]:
        """A Plotly figure (plain JSON) per panel: every branch in its own colour, with
        smoothing its raw line paler beside it."""
        metrics: dict[str, dict[str, Any]] = state.get("metrics", {})
        every = len(state.get("branches", {}))
        drawn = (f"{len(metrics)} of {every} branches: this one's line, those picked and the newest"
                 if len(metrics) < every else "")
        t0 = None
        if view.x_axis == "time":
            starts = [min(s["time"]) for m in metrics.values() for s in m.values() if s.get("time")]
            t0 = min(starts, default=0.0)
        out = {}
        for name, panel in self._panels(view).items():
            traces = []
            for branch in self._branch_order(state):
                for key in panel.keys:
                    d = metrics.get(branch, {}).get(key)
                    if not d or not d["value"]:
                        continue
                    xs = np.asarray(d["step"] if view.x_axis == "step" else d["time"], np.float64)
                    if t0 is not None:
                        xs = xs - t0
                    ys = np.asarray(d["value"], np.float64)
                    short = key.removeprefix(panel.label_strip[0]).removesuffix(panel.label_strip[1])
                    label = branch if len(panel.keys) == 1 else f"{branch}: {short}"
                    colour = self.colour(state, branch)
                    if len(panel.keys) > 1:  # several metrics per branch: one colour each
                        colour = PALETTE[(panel.keys.index(key) + 4 * self._branch_order(state).index(branch)) % len(PALETTE)]
                    traces.extend(self._traces(label, xs, ys, colour, panel, view))
            out[name] = self._figure(name, panel, traces, view, note=self._title_note(name, traces, view, drawn))
        return out

    def _title_note(self, name: str, traces: list[dict[str, Any]], view: View, drawn: str = "") -> str:
        """A second title line: when the next evaluation is due (eval plot), which branches
        are drawn when not all are, and the value of a plot's only point (easy to miss)."""
        notes = [self.capabilities().eval_note()] if name == "eval" else []
        notes.append(drawn)
        shown = [t for t in traces if t.get("showlegend") is not False]
        if len(shown) == 1:
            points = [(x, y) for x, y in zip(shown[0]["x"], shown[0]["y"], strict=False) if y is not None]
            if len(points) == 1:
                x, y = points[0]
                notes.append(f"{y:.4g} at step {x:g}" if view.x_axis == "step" else f"{y:.4g}")
        return " · ".join(n for n in notes if n)

    @staticmethod
    def _traces(label: str, xs: np.ndarray, ys: np.ndarray, colour: str, panel: Panel, view: View) -> list[dict[str, Any]]:
        x = xs.tolist()
        base = {"type": "scatter", "mode": "lines", "x": x, "hovertemplate": "%{y:.4g}"}
        line = {"color": colour, "width": 2, "shape": panel.shape}
        finite = [float(v) for v in ys if math.isfinite(v)]
        main: dict[str, Any] = {"name": label, "uid": label, "line": line}
        if len(finite) <= SPARSE_POINTS:  # every point drawn: a sparse line shows where it was measured
            main.update(mode="lines+markers", marker={"color": colour, "size": 7})
        if len(finite) == 1:  # in the legend too: the plot's one point is its whole news
            main["name"] = f"{label} = {finite[0]:.4g}"
        if view.smoothing <= 0 or not panel.smooth:
            return [{**base, **main, "y": _clean(ys.tolist())}]
        smooth = ema(ys, min(view.smoothing, 0.999))
        return [
            {**base, "name": f"{label} raw", "uid": f"{label} raw", "y": _clean(ys.tolist()), "showlegend": False,
             "line": {**line, "color": _paler(colour), "width": 1}},
            {**base, **main, "y": _clean(smooth.tolist())},
        ]

    @staticmethod
    def _figure(name: str, panel: Panel, traces: list[dict[str, Any]], view: View, note: str = "") -> dict[str, Any]:
        xaxis: dict[str, Any] = {"title": {"text": X_TITLES.get(view.x_axis, view.x_axis)}, "zeroline": False,
                                 "automargin": True}
        if view.zoomed:
            xaxis["range"] = [view.x_min, view.x_max]
        yaxis: dict[str, Any] = {"title": {"text": panel.y_title}, "zeroline": False, "exponentformat": "e",
                                 "automargin": True}
        if view.log_y:
            yaxis["type"] = "log"  # real log ticks: 1e-3, 1e-2, ...
        ys = {y for t in traces for y in t["y"] if y is not None}
        if len(ys) == 1 and (v := ys.pop()) > 0:  # a constant (a fixed lr): Plotly's own range reads it as 0
            yaxis["range"] = [math.log10(v) - 0.5, math.log10(v) + 0.5] if view.log_y else [0.5 * v, 1.5 * v]
        notes = textwrap.wrap(note, 64)  # under the title, in lines that fit a third of the page
        title: dict[str, Any] = {"text": panel.title, "x": 0.01, "xanchor": "left", "y": 0.98, "font": {"size": 14}}
        if notes:
            title["subtitle"] = {"text": "<br>".join(notes), "font": {"size": 11, "color": "#666666"}}
        layout: dict[str, Any] = {
            "title": title,
            "xaxis": xaxis,
            "yaxis": yaxis,
            "height": 270,
            "margin": {"l": 60, "r": 10, "t": 40 + 15 * len(notes), "b": 40},
            "hovermode": "x unified",
            "legend": {"title": {"text": "branch"}, "orientation": "h", "x": 1, "xanchor": "right", "y": 1.0,
                       "yanchor": "bottom", "font": {"size": 11}},
            # Keeps a person's zoom and legend clicks across refreshes (a new view resets them).
            "uirevision": f"{name}|{view.x_axis}|{view.log_y}|{view.x_min}|{view.x_max}|{view.custom}",
            "template": {"layout": {"plot_bgcolor": "#ffffff", "paper_bgcolor": "#ffffff",
                                    "xaxis": {"gridcolor": "#eeeeee"}, "yaxis": {"gridcolor": "#eeeeee"}}},
        }
        if not traces:
            # Plotly does not wrap: a long note in a third of the page would be cut at both edges
            text = "<br>".join(textwrap.wrap(panel.empty, 46))
            layout["annotations"] = [{"text": text, "showarrow": False, "xref": "paper", "yref": "paper",
                                      "x": 0.5, "y": 0.5, "font": {"size": 13, "color": "#777777"}}]
            layout["xaxis"]["visible"] = layout["yaxis"]["visible"] = False
        elif len(traces) > 1 or any(t.get("showlegend") is False for t in traces):
            layout["showlegend"] = True
        return {"data": traces, "layout": layout}

    def eval_metrics(self, keys: list[str] | None = None) -> list[str]:
        """The evaluation metrics logged: ``loss`` for ``eval/loss``, ``success`` for
        ``eval/<task>/success`` (a task's evaluation may report one per task or group)."""
        names = {k.split("/")[-1] for k in (self.metric_keys() if keys is None else keys)
                 if k.startswith("eval/") and k.count("/") in (1, 2)}
        return sorted(names, key=lambda n: (n != "loss", n != "success", n))

    def _eval_panel(self, view: View) -> Panel:
        keys = self.state.get("metric_keys", [])
        names = self.eval_metrics(keys)
        empty = "no evaluation yet" + ("" if self.capabilities().why_not("evaluate")
                                       else ": press 'evaluate' (Run & checkpoints) for one now")
        metric = view.eval_metric if view.eval_metric in names else (names[0] if names else "loss")
        grouped = sorted(k for k in keys if k.startswith("eval/") and k.count("/") == 2 and k.endswith(f"/{metric}"))
        plain = (f"eval/{metric}",)
        if not grouped:
            return Panel(plain, f"eval {metric}", f"eval {metric}", empty=empty)
        return Panel(plain + tuple(grouped), f"eval {metric} (one line per task)", metric, smooth=False,
                     label_strip=("eval/", f"/{metric}"), empty=empty)

    def metric_keys(self) -> list[str]:
        keys = self.state.get("metric_keys")
        if keys is None:
            try:
                keys = self.client.metric_keys()
            except Exception:  # noqa: BLE001
                keys = []
        return sorted(keys)

    def data_tables(self, state: dict[str, Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Sources (rows, weight as set and as drawn, rate, rejected) and recent rejections."""
        sources = {} if self.read_only else self.client.sources()
        status = (state or self.state).get("data") or (self.client.data_status() if state is None else {})
        stats = status.get("sources", {})
        rows = []
        for name, info in sources.items():
            st = stats.get(name, {})
            rows.append(
                {
                    "source": name,
                    "kind": "live" if info["live"] else "static",
                    "policy": info["policy"],
                    "rows": info["rows"],
                    "weight": info["weight"],
                    "drawn share": round(info["effective_weight"], 3),
                    "rows/s": round(st.get("ingest_rows_per_s", 0.0), 1),
                    "MiB": round(st.get("bytes", 0) / 2**20, 2),
                    "rejected": info["rejected"],
                    "note": "no data yet" if info["waiting_for_data"] else (info.get("storage_error") or st.get("storage_error") or ""),
                }
            )
        rejections = [
            {"time": time.strftime("%H:%M:%S", time.localtime(r["time"])), "source": r["source"], "reason": r["message"]}
            for r in reversed(status.get("rejections", [])[-20:])
        ]
        columns = ["source", "kind", "policy", "rows", "weight", "drawn share", "rows/s", "MiB", "rejected", "note"]
        return pd.DataFrame(rows, columns=columns), pd.DataFrame(rejections, columns=["time", "source", "reason"])

    def deployment(self, state: dict[str, Any] | None = None) -> tuple[str, pd.DataFrame, pd.DataFrame]:
        """The deployed side: a line on the rollout, the replicas (version each serves), and
        the judge's figures of the canary beside the stable version's."""
        r = (state or self.state).get("rollout") or {}
        replicas = [
            {"replica": x["name"][:12], "host": x["host"], "version": x["version"],
             "role": "canary" if x.get("canary") else "stable", "alive": "yes" if x["alive"] else f"no ({x['age_s']:.0f} s)",
             "served": x["served"], "logged rows": x["logged_rows"], "pending rows": x["pending_rows"],
             "versions served": ", ".join(map(str, x.get("versions_served", [])))}
            for x in r.get("replicas", [])
        ]
        columns = ["replica", "host", "version", "role", "alive", "served", "logged rows", "pending rows", "versions served"]
        if not r:
            return "no deployed replicas report to this run", pd.DataFrame(replicas, columns=columns), pd.DataFrame()
        if not r.get("enabled"):
            line = "no guarded rollout: every replica follows the newest published version"
        else:
            line = f"**stable** version {r['stable']}"
            if r.get("canary") is not None:
                line += f" · **canary** version {r['canary']} (judged for {time.time() - (r.get('canary_since') or time.time()):.0f} s)"
            if r.get("rejected"):
                line += f" · rolled back: {', '.join(map(str, r['rejected'][-10:]))}"
        if r.get("pinned") is not None:
            line += f" · **pinned** to version {r['pinned']} by hand"
        figures = r.get("figures", {})
        names = sorted({k for f in figures.values() for k in f} | set(r.get("guards", {})))
        shown_versions = [v for v in (r.get("stable"), r.get("canary")) if v is not None]
        shown_versions += [d["version"] for d in reversed(r.get("decisions", [])) if d["version"] not in shown_versions][:4]
        table = pd.DataFrame(
            [{"figure": n, "guard": (lambda g: f"{g['better']} is better, margin {g['margin']:g}")(r["guards"][n])
              if n in r.get("guards", {}) else "",
              **{f"v{v}" + (" (stable)" if v == r.get("stable") else " (canary)" if v == r.get("canary") else
                            " (rolled back)" if v in r.get("rejected", []) else ""):
                 (round(figures[str(v)][n], 4) if n in figures.get(str(v), {}) else None) for v in shown_versions}}
             for n in names])
        return line, pd.DataFrame(replicas, columns=columns), table

    def history(self, state: dict[str, Any] | None = None) -> pd.DataFrame:
        """Commands, newest first: who, what, status with step or reason."""
        rows = []
        commands = (state or self.state).get("history")
        if commands is None:
            commands = self.client.commands(limit=self.history_rows, newest_first=True)
        for r in commands:
            status = r["status"]
            if status == "applied":
                status = f"applied at step {r['applied_step']}"
            elif status == "accepted" and r.get("at_step") is not None:
                status = f"pending until step {r['at_step']}"
            rows.append(
                {
                    "#": r["seq"] or "",
                    "time": time.strftime("%H:%M:%S", time.localtime(r["received_at"])),
                    "source": r["source"] or "?",
                    "command": r["kind"] or "?",
                    "status": status,
                    # an agent's (or a person's) reason travels in the comment: show it with the outcome
                    "message": (f"why: {r['comment']} · " if r.get("comment") else "") + (r["message"] or "")[:300],
                    "args": json.dumps(r["args"])[:120],
                }
            )
        return pd.DataFrame(rows, columns=["#", "time", "source", "command", "status", "message", "args"])

    def optimizer_table(self, state: dict[str, Any] | None = None) -> pd.DataFrame:
        """The live hyperparameters of every param group, read from the optimizer."""
        snap = (state or self.state).get("snapshot")
        if snap is None:
            snap = self.client.snapshot()
        scale = self._lr_since_snapshot(snap, state or self.state)
        rows = [
            {"group": g["name"], "param": k, "value": _show_value(v * scale if k == "lr" and scale else v)}
            for g in snap.get("groups", [])
            for k, v in g["hparams"].items()
        ]
        return pd.DataFrame(rows, columns=["group", "param", "value"])

    @staticmethod
    def _lr_since_snapshot(snap: dict[str, Any], state: dict[str, Any]) -> float | None:
        """How far the schedule has moved every group's lr since the run last described its
        optimizer (a description is sent on changes, not every step; the logged lr is the
        first group's, and a schedule scales every group's lr alike). None: not known."""
        groups = snap.get("groups") or []
        then = groups[0]["hparams"].get("lr") if groups else None
        branch = (state.get("status") or {}).get("branch")
        logged = state.get("metrics", {}).get(branch, {}).get("lr", {})
        points = [(s, v) for s, v in zip(logged.get("step", []), logged.get("value", []), strict=False)
                  if v is not None and math.isfinite(v)]
        if not points or not isinstance(then, (int, float)) or then <= 0 or points[-1][0] <= snap.get("step", 0):
            return None
        return points[-1][1] / then

    def settings(self) -> dict[str, Any]:
        """Current schedule, clipping, accumulation, mixture, groups, modules, the newest
        checkpoints (and every tagged one), and the commands still pending."""
        snap = self.client.snapshot()
        groups = snap.get("groups", [])
        page = self.client.checkpoint_page(0, 50)["rows"]
        tagged = [c for c in self.client.checkpoints() if c.get("tag")] if len(page) == 50 else []
        ids = list(dict.fromkeys([c["id"] for c in page] + [c["id"] for c in reversed(tagged)]))
        return {
            "groups": [g["name"] for g in groups],
            "params": sorted({k for g in groups for k in g["hparams"]}),
            "schedule": snap.get("schedule"),
            "grad_clip": snap.get("grad_clip"),
            "grad_accumulation": snap.get("grad_accumulation"),
            "mixture": snap.get("mixture", {}),
            "modules": snap.get("modules", {}),
            "checkpoints": ids,
            "pending": self.pending(),
        }

    def module_info(self, path: str | None) -> dict[str, Any] | None:
        """What the trainer last said about one module (type, parameters, settable attributes)."""
        return self.client.snapshot().get("modules", {}).get(path) if path else None

    def pending(self) -> list[str]:
        """Accepted commands not applied yet, as ``#12 pause (at step 5000)``."""
        out = []
        for r in self.client.commands(limit=500, newest_first=True):
            if r["status"] == "accepted" and r["seq"]:
                at = f" (at step {r['at_step']})" if r.get("at_step") is not None else ""
                out.append(f"#{r['seq']} {r['kind']}{at}")
        return out

    def checkpoint_page(self, page: Any = 1, per_page: int = 20) -> tuple[pd.DataFrame, str, int]:
        """One page of the checkpoint table (newest first), a line saying which, and the
        page shown (a page past the end shows the last one)."""
        try:
            page = max(1, int(_number(page or 1, "page")))
        except ValueError:
            page = 1
        doc = self.client.checkpoint_page((page - 1) * per_page, per_page)
        total = doc["total"]
        pages = max(1, math.ceil(total / per_page))
        page = doc["offset"] // per_page + 1  # a page past the end shows the last one
        rows = [
            {
                "id": c["id"],
                "step": c["step"],
                "branch": c["branch"],
                "reason": c["reason"],
                "tag": c.get("tag") or "",
                "saved": time.strftime("%H:%M:%S", time.localtime(c["created_at"])),
            }
            for c in doc["rows"]
        ]
        table = pd.DataFrame(rows, columns=["id", "step", "branch", "reason", "tag", "saved"])
        return table, f"page {page} of {pages} · {total} checkpoint(s), newest first · click a row to pick it", page

    # -- steering (each returns a message for the person who clicked) ------------------
    def send(self, payload: dict[str, Any]) -> str:
        """Submit one command from the UI and wait briefly for its outcome."""
        try:
            rec: CommandRecord = self.client.submit(payload, source="ui")
        except Exception as e:  # noqa: BLE001 - the UI must not fall over
            if run_is_gone(e) and self._switch_to_run_dir():
                return f"not sent: {self.ended_note}"
            return f"failed to send: {str(e).splitlines()[0][:300]}"
        if rec.status.value == "rejected":
            return f"rejected: {rec.message}"
        try:
            rec = self.client.wait(rec, timeout=self.command_wait_s)
        except Exception:  # noqa: BLE001 - still pending: the history will show the outcome
            return f"#{rec.seq} {rec.kind} accepted; waiting for the next step boundary"
        if rec.status.value == "applied":
            return f"#{rec.seq} {rec.kind} applied at step {rec.applied_step}" + (f": {rec.message}" if rec.message else "")
        if rec.status.value in ("failed", "cancelled"):
            return f"#{rec.seq} {rec.kind} {rec.status.value}: {rec.message}"
        return f"#{rec.seq} {rec.kind} {rec.status.value}"

    def _guard(self, build: Any) -> str:
        try:
            payload = build()
        except ValueError as e:
            return f"not sent: {e}"
        return self.send(payload)

    def update_optimizer(self, group: str, param: str, value: str) -> str:
        def build() -> dict[str, Any]:
            if not param:
                raise ValueError("pick a hyperparameter")
            parsed = _json_value(str(value).strip())
            if isinstance(parsed, str):
                raise ValueError(f"{param} must be a number (or a list like [0.9, 0.95]), not {parsed[:40]!r}")
            return {"kind": "update_optimizer", "params": {param: parsed}, "group": None if group in ("", "all", None) else group}

        return self._guard(build)

    def pin_version(self, version: Any) -> str:
        """Pin every replica to ``version`` (None: unpin)."""
        def build() -> dict[str, Any]:
            if version in (None, ""):
                return {"kind": "pin_version"}
            return {"kind": "pin_version", "version": int(_number(version, "version"))}

        return self._guard(build)

    def set_schedule(self, kind: str, steps: Any, warmup: Any, min_lr_ratio: Any, gamma: Any) -> str:
        def build() -> dict[str, Any]:
            if not kind:
                raise ValueError("pick a schedule")
            payload: dict[str, Any] = {"kind": "set_lr_schedule", "schedule": kind}
            if steps not in (None, ""):
                payload["steps"] = int(_number(steps, "steps"))
            if warmup not in (None, ""):
                payload["warmup_steps"] = int(_number(warmup, "warmup steps"))
            if min_lr_ratio not in (None, ""):
                payload["min_lr_ratio"] = _number(min_lr_ratio, "min lr ratio")
            if gamma not in (None, ""):
                payload["gamma"] = _number(gamma, "gamma")
            return payload

        return self._guard(build)

    def set_grad_clip(self, max_norm: Any) -> str:
        def build() -> dict[str, Any]:
            text = str(max_norm if max_norm is not None else "").strip().lower()
            if not text:  # an empty box never turns clipping off by itself
                raise ValueError("type a max norm, or 'off' for no clipping")
            return {"kind": "set_grad_clip", "max_norm": None if text in ("off", "none") else _number(text, "max norm")}

        return self._guard(build)

    def set_grad_accumulation(self, steps: Any) -> str:
        return self._guard(lambda: {"kind": "set_grad_accumulation", "steps": int(_number(steps, "accumulation steps"))})

    def simple(self, kind: str) -> str:
        """pause, resume, stop, evaluate, publish_weights; promote_version, rollback_version (the canary)."""
        if kind not in ("pause", "resume", "stop", "evaluate", "publish_weights", "promote_version", "rollback_version"):
            return f"not sent: unknown action {kind[:40]!r}"
        return self.send({"kind": kind})

    def save_checkpoint(self, tag: str) -> str:
        tag = (tag or "").strip()
        return self.send({"kind": "save_checkpoint", **({"tag": tag} if tag else {})})

    def load_checkpoint(self, checkpoint_id: str, branch: str) -> str:
        checkpoint_id = (checkpoint_id or "").strip()
        if not checkpoint_id:
            return "not sent: pick a checkpoint"
        branch = (branch or "").strip()
        return self.send({"kind": "load_checkpoint", "checkpoint_id": checkpoint_id, **({"branch": branch} if branch else {})})

    def cancel(self, pending: str) -> str:
        """Cancel a pending command, given as ``#12 ...`` (its number first) or ``12``."""
        first = str(pending or "").strip().split(" ")[0].removeprefix("#")
        if not first.isdigit():
            return "not sent: pick a pending command (#number)"
        return self.send({"kind": "cancel", "seq": int(first)})

    def set_mixture(self, text: str) -> str:
        """``base=0.7 live=0.3`` (commas or spaces between)."""

        def build() -> dict[str, Any]:
            weights = {}
            for item in str(text).replace(",", " ").split():
                name, sep, w = item.partition("=")
                if not sep or not name:
                    raise ValueError(f"write weights as source=weight, e.g. base=0.7 live=0.3 (got {item[:40]!r})")
                weights[name] = _number(w, f"weight of {name[:40]!r}")
            if not weights:
                raise ValueError("no weights given")
            return {"kind": "set_data_mixture", "weights": weights}

        return self._guard(build)

    # -- any command, by kind: every registered kind (a new one appears here by itself) ----
    @staticmethod
    def kind_choices() -> list[tuple[str, str]]:
        """``(label, kind)`` of every command kind, for a dropdown."""
        return [(f"{k} - {kind_info(k).summary}"[:100], k) for k in COMMAND_KINDS]

    @staticmethod
    def kind_help(kind: str | None) -> tuple[str, str]:
        """What a kind does and takes (markdown), and an example of its arguments."""
        if not kind or kind not in COMMAND_KINDS:
            return "pick a command", ""
        info = kind_info(kind)
        lines = [f"**{info.kind}**: {info.help}", ""]
        for a in info.args:
            extra = ", ".join(x for x in (a.bounds, "" if a.required else f"default {a.default!r}") if x)
            lines.append(f"* `{a.name}` ({a.type}{', ' + extra if extra else ''}){': ' + a.description if a.description else ''}")
        if not info.args:
            lines.append("* no arguments")
        lines.append(f"\nas typed here and in the CLI: `{info.usage()}`")
        return "\n".join(lines), info.example

    def send_any(self, kind: str | None, arguments: str) -> str:
        """Any command kind with ``key=value`` arguments (the CLI's ``send`` syntax)."""
        if not kind:
            return "not sent: pick a command"
        return self._guard(lambda: payload_from_text(kind, arguments or ""))

    def update_module(self, module: str, op: str, attribute: str, value: Any) -> str:
        def build() -> dict[str, Any]:
            if not module:
                raise ValueError("pick a module")
            payload: dict[str, Any] = {"kind": "update_module", "module": module, "op": op}
            if op == "set_attribute":
                payload["attribute"] = (attribute or "").strip()
                payload["value"] = _number(value, "value")
            return payload

        return self._guard(build)
