"""The control UI's agents: start and stop an agent on the run from the page, and read what
every agent (started here or by ``ray-interactive agent``) saw, decided and why.

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
from ray_interactive.agents.runtime import AgentRunner, Journal, RulePolicy

#: How much of each journal's end a refresh reads (a long run's journal can grow large).
TAIL_BYTES = 256 * 1024
COLUMNS = ["time", "agent", "step", "decision (why)", "sent", "refused"]


def journal_table(run_dir: str | Path | None, rows: int = 30) -> pd.DataFrame:
    """The newest ``rows`` journal entries of all agents of the run, newest first."""
    entries: list[dict[str, Any]] = []
    for path in sorted(Path(run_dir).glob("agent-*.jsonl")) if run_dir else []:
        entries.extend(Journal(path).read(tail_bytes=TAIL_BYTES)[-rows:])
    entries.sort(key=lambda e: e.get("time", 0.0), reverse=True)
    out = []
    for e in entries[:rows]:
        out.append({
            "time": time.strftime("%H:%M:%S", time.localtime(e.get("time", 0.0))),
            "agent": e.get("agent", "?"),
            "step": e.get("step"),
            "decision (why)": (e.get("rationale") or f"error: {e.get('error')}")[:400],
            "sent": "; ".join(f"{s['command']['kind']} {_args(s['command'])} -> {s['status']}" for s in e.get("sent", [])),
            "refused": "; ".join([*(f"{k}: {e[k]}" for k in ("skipped", "partial") if e.get(k)),
                                  *(f"{r['command'].get('kind')}: {r['why']}" for r in e.get("refused", []))])[:400],
        })
    return pd.DataFrame(out, columns=COLUMNS)


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
              drift_window: Any = 500) -> str:
        try:
            n = int(every)
            rails = Guardrails(min_interval_s=float(min_interval), max_lr_drift=float(max_lr_drift),
                               drift_window_steps=int(drift_window))
        except ValidationError as e:  # its first line names only the model: say which field and why
            return "not started: " + "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())[:300]
        except (TypeError, ValueError) as e:
            return f"not started: {str(e).splitlines()[0][:200]}"
        if n < 1:
            return "not started: decide every N steps needs N >= 1"
        if policy not in ("rule", "llm"):
            return f"not started: unknown policy {policy!r} (rule or llm)"
        with self._lock:
            if policy in self._agents and self._agents[policy][1].is_alive():
                return f"the {policy} agent is already running; stop it first"
            self._notes[policy] = "starting ..."
            thread = threading.Thread(target=self._run, args=(policy, n, rails, llm_url or None), daemon=True,
                                      name=f"agent-{policy}")
            self._agents[policy] = (None, thread)  # type: ignore[assignment]  # the runner is made in the thread
            thread.start()
        return (f"{policy} agent starting: every {n} steps, at most one command every {rails.min_interval_s:g} s, "
                f"the lr within {rails.max_lr_drift:g}x over {rails.drift_window_steps} steps"
                + (" (loading the local model takes ~15-40 s)" if policy == "llm" and not llm_url else ""))

    def _run(self, policy: str, every: int, rails: Guardrails, llm_url: str | None) -> None:
        try:
            if policy == "llm":
                from ray_interactive.agents.llm import ChatClient, LLMPolicy
                from ray_interactive.agents.llm_server import endpoint

                self._notes[policy] = "loading the local model ..." if not llm_url else "connecting ..."
                url, server = endpoint(llm_url)
                if server is not None:
                    self._servers[policy] = server
                chosen: Any = LLMPolicy(ChatClient(url), constrain=server is not None)
            else:
                chosen = RulePolicy()
            runner = AgentRunner(self.client, chosen, rails, every=every)
            with self._lock:
                self._agents[policy] = (runner, self._agents[policy][1])
            self._notes[policy] = f"running, every {every} steps"
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
        return f"{policy} agent stopped"

    def status(self) -> str:
        if not self._notes:
            return "no agent started from this page (agents started elsewhere still show in the journal)"
        return " · ".join(f"**{p}**: {note}" for p, note in sorted(self._notes.items()))


__all__ = ["AgentPanel", "journal_table"]
