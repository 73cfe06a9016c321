"""The control UI's agents: start and stop an agent on the run from the page, and read what
every agent (started here or by ``ray-interactive agent``) saw, decided and why - and, for
the agents that test their moves on branches, what each candidate scored and which was kept.

An agent started here runs in the UI server's process, in a thread, with the UI's own
client (it acts as source ``agent``, like one started from the CLI). The journal table
reads the ``agent-*.jsonl`` files in the run directory, so it shows agents wherever they run.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from ray_interactive.agents.guardrails import Guardrails
from ray_interactive.agents.lookahead import LookaheadAgent, lr_moves
from ray_interactive.agents.runtime import AgentRunner, Journal, RulePolicy
from ray_interactive.agents.settings import numbers, pairs, split_items

#: How much of each journal's end a refresh reads (a long run's journal can grow large).
TAIL_BYTES = 256 * 1024
COLUMNS = ["time", "agent", "step", "decision (why)", "tried on branches (score)", "sent", "refused"]
#: What the page can start: the CLI's policies, and the LLM with its moves tested first.
POLICIES = ("rule", "llm", "llm-check", "lookahead", "mixture")


def _entries(run_dir: str | Path | None, rows: int) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for path in sorted(Path(run_dir).glob("agent-*.jsonl")) if run_dir else []:
        entries.extend(Journal(path).read(tail_bytes=TAIL_BYTES)[-rows:])
    entries.sort(key=lambda e: e.get("time", 0.0))
    return entries


def _exploration(e: dict[str, Any]) -> dict[str, Any] | None:
    """The lookahead part of a journal entry: a lookahead's own, or the test of an LLM's move."""
    if e.get("kind") == "lookahead":
        return e
    return e.get("tested") or None


def _tried(e: dict[str, Any]) -> str:
    look = _exploration(e)
    if look is None:
        return ""
    parts = [f"{t['move']} {t['score']:.4g}" if t.get("error") is None else f"{t['move']} failed"
             for t in look.get("trials") or []]
    kept = look.get("chosen")
    return (", ".join(parts) + (f" -> kept {kept}" if kept else "")
            + (f" ({look.get('explored_steps', 0)} steps explored)" if parts else ""))[:400]


def journal_table(run_dir: str | Path | None, rows: int = 30) -> pd.DataFrame:
    """The newest ``rows`` journal entries of all agents of the run, newest first."""
    out = []
    for e in reversed(_entries(run_dir, rows)[-rows:]):
        out.append({
            "time": time.strftime("%H:%M:%S", time.localtime(e.get("time", 0.0))),
            "agent": e.get("agent", "?"),
            "step": e.get("step"),
            "decision (why)": (e.get("rationale") or f"error: {e.get('error')}")[:400],
            "tried on branches (score)": _tried(e),
            "sent": "; ".join(f"{s['command']['kind']} {_args(s['command'])} -> {s['status']}" for s in e.get("sent", [])),
            "refused": "; ".join([*(f"{k}: {e[k]}" for k in ("skipped", "partial") if e.get(k)),
                                  *(f"{r['command'].get('kind')}: {r['why']}" for r in e.get("refused", []))])[:400],
        })
    return pd.DataFrame(out, columns=COLUMNS)


def lookahead_figure(run_dir: str | Path | None, rows: int = 200) -> dict[str, Any]:
    """Every exploration's candidates as points at the step it started from (y: the score each
    reached after its horizon), the kept one ringed: the decisions' figures at a glance."""
    traces: dict[str, dict[str, Any]] = {}
    kept: dict[str, list[Any]] = {"x": [], "y": [], "text": []}
    for e in _entries(run_dir, rows):
        if e.get("kind") != "lookahead":  # a runner's "tested" repeats what its lookahead journalled
            continue
        look, step = e, e.get("step")
        if step is None:
            continue
        for t in look.get("trials") or []:
            if t.get("error") is not None or t.get("score") is None:
                continue
            tr = traces.setdefault(t["move"], {"type": "scatter", "mode": "markers", "name": t["move"],
                                               "x": [], "y": [], "marker": {"size": 9}})
            tr["x"].append(step)
            tr["y"].append(t["score"])
            if t["move"] == look.get("chosen"):
                kept["x"].append(step)
                kept["y"].append(t["score"])
                kept["text"].append(f"kept {t['move']} ({e.get('agent', '?')})")
    data = [*traces.values(), {"type": "scatter", "mode": "markers", "name": "kept", "x": kept["x"], "y": kept["y"],
                               "text": kept["text"], "marker": {"size": 17, "symbol": "circle-open",
                                                                "line": {"width": 2}, "color": "black"}}]
    title = "moves tried on branches: each candidate's score after its horizon (ringed: kept)"
    if not kept["x"]:
        title = "no move tried on branches yet (lookahead, or llm with its moves tested)"
    return {"data": data, "layout": {"title": {"text": title, "font": {"size": 13}}, "height": 300,
                                     "xaxis": {"title": {"text": "step the moves started from"}},
                                     "yaxis": {"title": {"text": "score (lower is better)"}},
                                     "margin": {"l": 60, "r": 20, "t": 40, "b": 45}}}


def _args(payload: dict[str, Any]) -> str:
    rest = {k: v for k, v in payload.items() if k != "kind"}
    return json.dumps(rest)[:80] if rest else ""


class AgentPanel:
    """The agents started from this UI (one per policy), and their journals."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._agents: dict[str, tuple[AgentRunner, threading.Thread]] = {}
        self._notes: dict[str, str] = {}  # policy -> what happened to it (loading, failed, stopped)
        self._lock = threading.Lock()
        self._servers: dict[str, Any] = {}

    def start(self, policy: str, every: Any, min_interval: Any, llm_url: str | None = None, max_lr_drift: Any = 10.0,
              drift_window: Any = 500, horizon: Any = 50, factors: str | None = "0.5 1 2",
              track: str | None = "", ceiling: str | None = "") -> str:
        try:
            n = int(every)
            rails = Guardrails(min_interval_s=float(min_interval), max_lr_drift=float(max_lr_drift),
                               drift_window_steps=int(drift_window))
            opts = _options(policy, horizon, factors, track, ceiling)
        except ValidationError as e:  # its first line names only the model: say which field and why
            return "not started: " + "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())[:300]
        except (TypeError, ValueError) as e:
            return f"not started: {str(e).splitlines()[0][:200]}"
        if n < 1:
            return "not started: decide every N steps needs N >= 1"
        with self._lock:
            if policy in self._agents and self._agents[policy][1].is_alive():
                return f"the {policy} agent is already running; stop it first"
            self._notes[policy] = "starting ..."
            thread = threading.Thread(target=self._run, args=(policy, n, rails, llm_url or None, opts), daemon=True,
                                      name=f"agent-{policy}")
            self._agents[policy] = (None, thread)  # type: ignore[assignment]  # the runner is made in the thread
            thread.start()
        if policy == "lookahead":
            tries = " / ".join(f"x{f:g}" for f in opts["factors"])
            what = f"tries lr {tries} for {opts['horizon']} steps each on branches every {n} steps"
        elif policy == "mixture":
            what = f"shifts the mixture at each evaluation, tracking {', '.join(opts['track'])}"
        else:
            what = (f"every {n} steps, at most one command every {rails.min_interval_s:g} s, "
                    f"the lr within {rails.max_lr_drift:g}x over {rails.drift_window_steps} steps")
            if opts.get("ceiling"):
                what += "; halves the lr while " + ", ".join(f"{m}'s update/weight ratio > {v:g}"
                                                               for m, v in opts["ceiling"].items())
            if policy == "llm-check":
                what += f"; each move tried for {opts['horizon']} steps on a branch against keeping the lr"
        return (f"{policy} agent starting: {what}"
                + (" (loading the local model takes ~15-40 s)" if policy.startswith("llm") and not llm_url else ""))

    def _run(self, policy: str, every: int, rails: Guardrails, llm_url: str | None, opts: dict[str, Any]) -> None:
        try:
            runner: Any
            look = None
            if policy == "lookahead":
                factors = tuple(opts["factors"])
                runner = LookaheadAgent(self.client, horizon=opts["horizon"], moves=lambda lr: lr_moves(lr, factors))
            else:
                if policy in ("llm", "llm-check"):
                    from ray_interactive.agents.llm import ChatClient, LLMPolicy
                    from ray_interactive.agents.llm_server import endpoint

                    self._notes[policy] = "loading the local model ..." if not llm_url else "connecting ..."
                    url, server = endpoint(llm_url)
                    if server is not None:
                        self._servers[policy] = server
                    chosen: Any = LLMPolicy(ChatClient(url), constrain=server is not None,
                                            check=policy == "llm-check")
                    if policy == "llm-check":
                        look = LookaheadAgent(self.client, horizon=opts["horizon"], name="llm-check")
                elif policy == "mixture":
                    from ray_interactive.agents.mixture import MixturePolicy

                    chosen = MixturePolicy(opts["track"])
                else:
                    chosen = RulePolicy(update_ceiling=opts.get("ceiling"))
                runner = AgentRunner(self.client, chosen, rails, every=every, at_eval=policy == "mixture",
                                     lookahead=look)
            with self._lock:
                self._agents[policy] = (runner, self._agents[policy][1])
            self._notes[policy] = "running, at each evaluation" if policy == "mixture" else f"running, every {every} steps"
            if policy == "lookahead":
                runner.run(every=every)
            else:
                runner.run()
            self._notes[policy] = "stopped" if runner.stopped else "the run ended"
        except Exception as e:  # noqa: BLE001 - an agent's failure is shown, never the UI's
            self._notes[policy] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        finally:
            server = self._servers.pop(policy, None)
            if server is not None:
                server.close()

    def stop(self, policy: str) -> str:
        with self._lock:
            runner, thread = self._agents.get(policy, (None, None))
        if thread is None or not thread.is_alive():
            return f"no {policy} agent is running here"
        if runner is None:
            return f"the {policy} agent is still starting; stop it once it runs"
        runner.stop()
        thread.join(timeout=30)
        if thread.is_alive() and getattr(runner, "exploring", False):
            return (f"{policy} agent stopping: it finishes the candidate under way, then the run goes on from the "
                    "best so far")
        return f"{policy} agent stopped"

    def status(self) -> str:
        if not self._notes:
            return "no agent started from this page (agents started elsewhere still show in the journal)"
        return " · ".join(f"**{p}**: {note}" for p, note in sorted(self._notes.items()))


def _options(policy: str, horizon: Any, factors: str | None, track: str | None,
             ceiling: str | None = None) -> dict[str, Any]:
    """The policy-specific settings from the page's fields; ValueError says what is wrong."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r} ({', '.join(POLICIES)})")
    opts: dict[str, Any] = {}
    if policy == "rule" and (ceiling or "").strip():
        form = "update-ratio ceilings as MODULE=RATIO, comma separated (e.g. transformer.h.0=0.008)"
        opts["ceiling"] = numbers(split_items(ceiling), form)
        RulePolicy(update_ceiling=opts["ceiling"])  # its own checks (positive, finite)
    if policy in ("lookahead", "llm-check"):
        opts["horizon"] = int(horizon)
        if opts["horizon"] < 1:
            raise ValueError("steps each candidate trains (horizon) must be >= 1")
    if policy == "lookahead":
        try:
            opts["factors"] = [float(f) for f in (factors or "").replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"lr factors are numbers separated by spaces (e.g. 0.5 1 2), not {factors!r}") from None
        lr_moves(1.0, tuple(opts["factors"]))  # its own check: each a positive number
        if len(opts["factors"]) < 2:
            raise ValueError("give at least two lr factors to compare (e.g. 0.5 1 2)")
    if policy == "mixture":
        from ray_interactive.agents.mixture import MixturePolicy

        tracked = pairs(split_items(track), "track sources as SOURCE=METRIC, comma separated (e.g. base=eval/base/loss)")
        MixturePolicy(tracked)  # its own checks (two or more sources, ...)
        opts["track"] = tracked
    return opts


__all__ = ["POLICIES", "AgentPanel", "journal_table", "lookahead_figure"]
