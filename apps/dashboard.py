"""What the control UI shows and does, as plain methods over a :class:`RunClient`.

The Gradio app (:mod:`apps.control_ui`) is a thin layer over this class: every control is
one method that sends one command through the run's command API and returns a message a
person can read (the rejection reason included). Nothing here raises to the UI: bad
input becomes a message, and the run never sees anything the controller did not accept.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import pandas as pd

from ray_interactive.commands import CommandRecord

#: The fixed plots: panel -> metric keys drawn in it.
PANELS: dict[str, list[str]] = {
    "loss": ["loss"],
    "eval": ["eval/loss"],
    "lr": ["lr"],
    "grad_norm": ["grad_norm"],
    "throughput": ["samples_per_s"],
    "freshness": ["data/freshest_age_s", "data/mean_age_s", "data/first_use_p50_s", "data/first_use_p95_s"],
}
#: One colour per branch (in order of creation); a branch's raw line is a paler shade of it.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


def _paler(hex_colour: str, amount: float = 0.6) -> str:
    rgb = [int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in rgb)


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"x": pd.Series(dtype=float), "y": pd.Series(dtype=float), "series": pd.Series(dtype=str)})


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


class Dashboard:
    """Reads and steers one run for the UI (and for scripts through its endpoints)."""

    def __init__(self, client: Any, max_points: int = 400, command_wait_s: float = 5.0) -> None:
        self.client = client
        self.max_points = max_points
        self.command_wait_s = command_wait_s  # how long a control waits for "applied" before answering "accepted"
        self._branches: dict[str, dict[str, Any]] = {}

    # -- reading ---------------------------------------------------------------------
    def status_markdown(self) -> str:
        try:
            s = self.client.status()
        except Exception as e:  # noqa: BLE001 - the run may be gone; say so
            return f"**run unreachable**: {e}"
        state = s.get("status", "?")
        weights = s.get("weights_version")
        parts = [
            f"**{state.upper()}**",
            f"step **{s.get('step', 0)}**",
            f"branch **{s.get('branch')}**",
            f"{s.get('samples_per_s', 0):.1f} samples/s",
            f"last checkpoint {s.get('last_checkpoint') or '—'}",
            f"weights v{weights}" if weights else "no weights published",
        ]
        if s.get("message") and state == "failed":
            parts.append(f"error: {str(s['message']).splitlines()[-1][:200]}")
        return " · ".join(parts)

    def branches(self) -> dict[str, dict[str, Any]]:
        self._branches = self.client.branches()  # kept for color_map
        return self._branches

    def branch_tree(self) -> str:
        """The branches as an indented tree: where each forked from."""
        branches = self.branches()
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

    def plot_frames(
        self,
        x_axis: str = "step",
        smoothing: float = 0.0,
        log_y: bool = False,
        x_min: float | None = None,
        x_max: float | None = None,
        custom: str | None = None,
    ) -> dict[str, pd.DataFrame]:
        """One long-format frame (x, y, series) per panel, every branch in its own colour.

        Each series is thinned on the server (min/max per bucket) to ``max_points`` over
        the visible step range; with smoothing the raw line stays, as "<branch> raw".
        """
        panels = dict(PANELS)
        if custom:
            panels["custom"] = [custom]
        keys = sorted({k for ks in panels.values() for k in ks})
        if x_min is None or x_max is None or not x_max > x_min:  # an empty range means "all"
            x_min = x_max = None
        since = until = None
        if x_axis == "step":
            since = int(math.floor(x_min)) if x_min is not None else None
            until = int(math.ceil(x_max)) if x_max is not None else None
        frames: dict[str, list[pd.DataFrame]] = {p: [] for p in panels}
        t0 = None
        for branch in self.branches():
            data = self.client.metrics(keys=keys, branch=branch, since=since, until=until, max_points=self.max_points)
            for panel, pkeys in panels.items():
                for key in pkeys:
                    d = data.get(key)
                    if not d or not d["value"]:
                        continue
                    xs = np.asarray(d["step"] if x_axis == "step" else d["time"], np.float64)
                    if x_axis != "step":
                        t0 = xs.min() if t0 is None else min(t0, xs.min())
                    ys = np.asarray(d["value"], np.float64)
                    name = branch if len(pkeys) == 1 else f"{branch}: {key.removeprefix('data/')}"
                    for label, values in self._lines(name, ys, smoothing):
                        frames[panel].append(pd.DataFrame({"x": xs, "y": values, "series": label}))
        out = {}
        for panel, parts in frames.items():
            df = pd.concat(parts, ignore_index=True) if parts else _empty()
            if x_axis != "step" and len(df) and t0 is not None:
                df["x"] = df["x"] - t0  # seconds since the first point
                if x_min is not None or x_max is not None:
                    lo, hi = x_min if x_min is not None else -np.inf, x_max if x_max is not None else np.inf
                    df = df[(df["x"] >= lo) & (df["x"] <= hi)]
            if log_y and len(df):
                df = df[df["y"] > 0].assign(y=lambda f: np.log10(f["y"]))
            out[panel] = df.reset_index(drop=True)
        return out

    def color_map(self, series: list[str]) -> dict[str, str]:
        """Colours of plot series: by branch (creation order), the raw line paler; a panel
        with several metrics per branch (freshness) gives each metric its own colour."""
        order = {b: i for i, b in enumerate(sorted(self._branches, key=lambda b: self._branches[b].get("created_at", 0)))}
        out: dict[str, str] = {}
        for i, name in enumerate(sorted(series)):
            base, raw = (name[:-4], True) if name.endswith(" raw") else (name, False)
            colour = PALETTE[order[base] % len(PALETTE)] if base in order else PALETTE[i % len(PALETTE)]
            out[name] = _paler(colour) if raw else colour
        return out

    @staticmethod
    def _lines(name: str, ys: np.ndarray, smoothing: float) -> list[tuple[str, np.ndarray]]:
        if smoothing <= 0:
            return [(name, ys)]
        return [(f"{name} raw", ys), (name, ema(ys, min(smoothing, 0.999)))]

    def metric_keys(self) -> list[str]:
        try:
            return sorted(self.client.metric_keys())
        except Exception:  # noqa: BLE001
            return []

    def data_tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Sources (rows, weight as set and as drawn, rate, rejected) and recent rejections."""
        sources = self.client.sources()
        status = self.client.data_status()
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
                    "note": "no data yet" if info["waiting_for_data"] else (st.get("storage_error") or ""),
                }
            )
        rejections = [
            {"time": time.strftime("%H:%M:%S", time.localtime(r["time"])), "source": r["source"], "reason": r["message"]}
            for r in reversed(status.get("rejections", [])[-20:])
        ]
        return pd.DataFrame(rows), pd.DataFrame(rejections, columns=["time", "source", "reason"])

    def history(self, limit: int = 50) -> pd.DataFrame:
        """Commands, newest first: who, what, status with step or reason."""
        rows = []
        for r in self.client.commands(limit=limit, newest_first=True):
            status = r["status"]
            if status == "applied":
                status = f"applied at step {r['applied_step']}"
            rows.append(
                {
                    "#": r["seq"] or "",
                    "time": time.strftime("%H:%M:%S", time.localtime(r["received_at"])),
                    "source": r["source"] or "?",
                    "command": r["kind"] or "?",
                    "status": status,
                    "message": (r["message"] or "")[:300],
                    "args": json.dumps(r["args"])[:120],
                }
            )
        return pd.DataFrame(rows, columns=["#", "time", "source", "command", "status", "message", "args"])

    def optimizer_table(self) -> pd.DataFrame:
        """The live hyperparameters of every param group, read from the optimizer."""
        snap = self.client.snapshot()
        rows = [
            {"group": g["name"], "param": k, "value": json.dumps(v)}
            for g in snap.get("groups", [])
            for k, v in g["hparams"].items()
        ]
        return pd.DataFrame(rows, columns=["group", "param", "value"])

    def settings(self) -> dict[str, Any]:
        """Current schedule, clipping, accumulation, mixture, groups, modules, checkpoints."""
        snap = self.client.snapshot()
        groups = snap.get("groups", [])
        return {
            "groups": [g["name"] for g in groups],
            "params": sorted({k for g in groups for k in g["hparams"]}),
            "schedule": snap.get("schedule"),
            "grad_clip": snap.get("grad_clip"),
            "grad_accumulation": snap.get("grad_accumulation"),
            "mixture": snap.get("mixture", {}),
            "modules": snap.get("modules", {}),
            "checkpoints": [c["id"] for c in reversed(self.client.checkpoints())],
        }

    # -- steering (each returns a message for the person who clicked) ------------------
    def send(self, payload: dict[str, Any]) -> str:
        """Submit one command from the UI and wait briefly for its outcome."""
        try:
            rec: CommandRecord = self.client.submit(payload, source="ui")
        except Exception as e:  # noqa: BLE001 - the UI must not fall over
            return f"failed to send: {e}"
        if rec.status.value == "rejected":
            return f"rejected: {rec.message}"
        try:
            rec = self.client.wait(rec, timeout=self.command_wait_s)
        except Exception:  # noqa: BLE001 - still pending: the history will show the outcome
            return f"#{rec.seq} {rec.kind} accepted; waiting for the next step boundary"
        if rec.status.value == "applied":
            return f"#{rec.seq} {rec.kind} applied at step {rec.applied_step}" + (f": {rec.message}" if rec.message else "")
        if rec.status.value == "failed":
            return f"#{rec.seq} {rec.kind} failed: {rec.message}"
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

    def set_schedule(self, kind: str, steps: Any, warmup: Any, min_lr_ratio: Any, gamma: Any) -> str:
        def build() -> dict[str, Any]:
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
        return self._guard(
            lambda: {"kind": "set_grad_clip", "max_norm": None if max_norm in (None, "", "off", "none") else _number(max_norm, "max norm")}
        )

    def set_grad_accumulation(self, steps: Any) -> str:
        return self._guard(lambda: {"kind": "set_grad_accumulation", "steps": int(_number(steps, "accumulation steps"))})

    def simple(self, kind: str) -> str:
        """pause, resume, stop, evaluate, publish_weights."""
        if kind not in ("pause", "resume", "stop", "evaluate", "publish_weights"):
            return f"not sent: unknown action {kind[:40]!r}"
        return self.send({"kind": kind})

    def save_checkpoint(self, tag: str) -> str:
        tag = (tag or "").strip()
        return self.send({"kind": "save_checkpoint", **({"tag": tag} if tag else {})})

    def load_checkpoint(self, checkpoint_id: str, branch: str) -> str:
        if not checkpoint_id:
            return "not sent: pick a checkpoint"
        branch = (branch or "").strip()
        return self.send({"kind": "load_checkpoint", "checkpoint_id": checkpoint_id, **({"branch": branch} if branch else {})})

    def set_mixture(self, text: str) -> str:
        """``base=0.7 live=0.3`` (commas or spaces between)."""

        def build() -> dict[str, Any]:
            weights = {}
            for item in str(text).replace(",", " ").split():
                name, sep, w = item.partition("=")
                if not sep or not name:
                    raise ValueError(f"write weights as source=weight, e.g. base=0.7 live=0.3 (got {item[:40]!r})")
                weights[name] = _number(w, f"weight of {name!r}")
            if not weights:
                raise ValueError("no weights given")
            return {"kind": "set_data_mixture", "weights": weights}

        return self._guard(build)

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
