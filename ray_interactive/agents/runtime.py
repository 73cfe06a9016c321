"""The agent runtime: watch a run, ask a policy, check its proposal, act, keep a journal.

An agent attaches to a run by name like any client and acts only through the command API
(source ``agent``, its rationale in the command's ``comment``), so it works on every
front-end. Each *tick* (every ``every`` steps, or at each new evaluation) it

1. observes: status, the loss / eval / lr histories, and its own past actions;
2. asks its policy for a :class:`Decision` (commands + why);
3. screens the decision as a whole (:func:`screen`): each command against the
   :class:`~ray_interactive.agents.guardrails.Guardrails`, and whether it can be carried
   out (a checkpoint to reload). A decision is whole or nothing: if any part is refused,
   none is sent and the entry says ``skipped`` and why - a "reload and halve" with
   nothing to reload is not quietly cut down to "halve";
4. sends the decision and writes everything - what it saw, what it proposed, what was
   refused and why, what the run answered - as one line of ``agent-<name>.jsonl`` in the
   run directory (a journal the UI and people can read).

A policy that raises, or proposes nonsense, is journalled and the run goes on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ray_interactive.agents.detectors import diagnose
from ray_interactive.agents.guardrails import Guardrails, LrHistory, RunFacts, vet
from ray_interactive.agents.journal import Journal
from ray_interactive.agents.lookahead import Move

log = logging.getLogger(__name__)

#: How many of the newest points of each series an observation carries.
HISTORY = 200


@dataclass
class Observation:
    """What a policy sees at a tick."""

    step: int
    status: str
    branch: str
    lr: float | None
    loss: list[float]  # newest last
    loss_steps: list[int]  # the step of each loss point
    eval_loss: list[float]
    paused_by: str | None
    checkpoints: list[dict[str, Any]]  # oldest first
    own_actions: list[dict[str, Any]]  # this agent's commands so far (newest last)
    lr_history: list[float] = field(default_factory=list)  # the lr at each logged step (newest last)
    health: dict[str, float] = field(default_factory=dict)  # newest value of each health/* metric
    evals: dict[str, float] = field(default_factory=dict)  # newest value of each eval/* metric
    mixture: dict[str, float] = field(default_factory=dict)  # the data mixture's weights now

    def facts(self, seconds_since_last: float | None, window_lrs: tuple[float, ...] = ()) -> RunFacts:
        return RunFacts(lrs=[self.lr] if self.lr else [], paused_by=self.paused_by,
                        seconds_since_last=seconds_since_last, window_lrs=window_lrs)


@dataclass
class Decision:
    """What a policy proposes: command payloads (possibly none) and why."""

    commands: list[dict[str, Any]] = field(default_factory=list)
    rationale: str = ""
    finding: dict[str, Any] | None = None
    #: moves to test on branches before any is applied (``{"name", "commands"}`` each): a
    #: runner with a lookahead tries them against keeping things as they are; one without
    #: sends ``commands`` as usual
    trials: list[dict[str, Any]] = field(default_factory=list)


class Policy(Protocol):
    name: str

    def decide(self, obs: Observation) -> Decision: ...


class RulePolicy:
    """The rule agent: the detectors on the loss history, each mapped to an action.

    * non-finite or diverging loss -> load the newest finite checkpoint and halve the lr;
    * oscillation -> halve the lr;
    * plateau -> halve the lr (a decay step), unless the run evaluates and its validation
      loss fell by more than ``eval_progress`` (1 %) between its two newest evaluations: a
      small batch's training loss looks flat within its noise long before learning stops
      (case study 2: without this check the agent decayed a still-improving run too early).

    * ``update_ceiling`` (``{module: ratio}``, needs health sampling): a module whose newest
      update-to-weight ratio is above its ceiling -> halve the lr, before the loss shows
      anything. The ratio follows the lr (an Adam step's size is about the lr), so it comes
      back under the ceiling once the lr is low enough and the agent stops there
      (``docs/health_indicators.md``: a ceiling fitted on a grid's seed warned of every bad lr
      of the other seeds at the first sample, with no false alarm). The ratio also falls as
      training goes on, so a ceiling fitted on early samples stops firing early (case study 1:
      at 1e-2-5e-3 from 2e-2, where 1e-3 was best); the loss detectors go on after it.

    Only the points since its last action count, so it sees the effect of what it did
    before it acts again (with health sampled at least every ``min_points`` steps, a ceiling
    is judged on a ratio taken after that action).
    """

    name = "rule"

    def __init__(self, factor: float = 0.5, min_points: int = 20, eval_progress: float = 0.01,
                 update_ceiling: dict[str, float] | None = None) -> None:
        for module, ceiling in (update_ceiling or {}).items():
            if not (isinstance(ceiling, int | float) and math.isfinite(ceiling) and ceiling > 0):
                raise ValueError(f"the update-ratio ceiling of {module!r} must be a positive number, not {ceiling!r}")
        self.factor, self.min_points, self.eval_progress = factor, min_points, eval_progress
        self.update_ceiling = dict(update_ceiling or {})
        self._since: tuple[str, int] = ("", -1)  # (branch, step) of its last action: older points are not looked at

    def decide(self, obs: Observation) -> Decision:
        if obs.status != "running" or obs.lr is None:
            return Decision(rationale=f"nothing to do while the run is {obs.status}")
        # a load it asked for starts a new branch: its own points are all new
        since = self._since[1] if obs.branch == self._since[0] else -1
        fresh = [v for s, v in zip(obs.loss_steps, obs.loss) if s > since]
        if len(fresh) < self.min_points and not (fresh and not math.isfinite(fresh[-1])):
            return Decision(rationale=f"waiting for {self.min_points} points since the last action ({len(fresh)} so far)")
        found = diagnose(fresh)
        over = {m: v for m, v in update_ratios(obs.health).items() if v > self.update_ceiling.get(m, math.inf)}
        if over and (found is None or found.pattern not in ("non_finite", "diverging")):
            module = max(over, key=lambda m: over[m] / self.update_ceiling[m])
            lr = obs.lr * self.factor
            self._since = (obs.branch, obs.step)
            return Decision([{"kind": "update_optimizer", "params": {"lr": lr}}],
                            f"update/weight ratio of {module} {over[module]:.3g} is above its ceiling "
                            f"{self.update_ceiling[module]:.3g}: halve the lr ({obs.lr:.3g} -> {lr:.3g})",
                            {"pattern": "update_ceiling", "module": module, "ratio": over[module],
                             "ceiling": self.update_ceiling[module]})
        if found is None:
            return Decision(rationale="the loss looks healthy: no oscillation, divergence or plateau")
        if found.pattern == "plateau" and len(obs.eval_loss) >= 2:
            prev, last = obs.eval_loss[-2], obs.eval_loss[-1]
            if math.isfinite(prev) and math.isfinite(last) and prev > 0 and last < prev * (1 - self.eval_progress):
                return Decision(
                    rationale=(f"the training loss is flat within its noise, but the validation loss still fell "
                               f"{1 - last / prev:.1%} ({prev:.4g} -> {last:.4g}) at the last evaluation: keep the lr"),
                    finding={"pattern": "plateau", "overruled_by": "eval/loss", **found.figures})
        lr = obs.lr * self.factor
        commands: list[dict[str, Any]] = []
        what = {"oscillating": "halve the lr", "plateau": "halve the lr (a decay step)"}.get(found.pattern, "")
        finding: dict[str, Any] = {"pattern": found.pattern, **found.figures}
        if found.pattern in ("non_finite", "diverging"):
            good = [c for c in obs.checkpoints if c.get("finite", True) and c.get("branch") == obs.branch]
            if good:
                commands.append({"kind": "load_checkpoint", "checkpoint_id": good[-1]["id"]})
                what = "reload the last good checkpoint and halve the lr"
            else:  # said, not silently dropped: the journal tells why nothing was reloaded
                what = f"no finite checkpoint on branch {obs.branch!r} to reload: halve the lr only"
            finding["reload"] = good[-1]["id"] if good else None
        commands.append({"kind": "update_optimizer", "params": {"lr": lr}})
        self._since = (obs.branch, obs.step)
        where = hottest_module(obs.health)
        if where is not None:  # per-module health, when sampled, says where the updates are largest
            finding["largest_update_ratio"] = {"module": where[0], "value": where[1]}
            what += f"; largest update/weight ratio in {where[0]} ({where[1]:.3g})"
        return Decision(commands, f"{found.pattern}: {found.reason}; {what} ({obs.lr:.3g} -> {lr:.3g})", finding)


def update_ratios(health: dict[str, float]) -> dict[str, float]:
    """``{module: update-to-weight ratio}`` from the newest ``health/<module>/update_ratio`` values."""
    return {k.removeprefix("health/").removesuffix("/update_ratio"): v for k, v in health.items()
            if k.endswith("/update_ratio") and v is not None and math.isfinite(v)}


def hottest_module(health: dict[str, float]) -> tuple[str, float] | None:
    """The module with the largest sampled update-to-weight ratio (None: not sampled)."""
    ratios = update_ratios(health)
    return max(ratios.items(), key=lambda kv: kv[1]) if ratios else None


class AgentRunner:
    """Runs a policy against one run (a :class:`~ray_interactive.runtime.client.RunClient`)."""

    def __init__(
        self, client: Any, policy: Policy, rails: Guardrails | None = None, every: int = 50,
        journal: Journal | None = None, name: str | None = None,
        on_tick: Callable[[dict[str, Any]], None] | None = None, at_eval: bool = False,
        lookahead: Any = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1 step, not {every}")
        self.client, self.policy, self.rails, self.every = client, policy, rails or Guardrails(), every
        self.at_eval = at_eval  # tick at each new evaluation instead of every ``every`` steps
        self._last_eval, self._eval_branch = -1, ""
        self.on_tick = on_tick  # sees each journal entry (the CLI prints it)
        self.name = name or policy.name
        run_dir = Path(client.status()["run_dir"])
        self.journal = journal or Journal(run_dir / f"agent-{self.name}.jsonl")
        self._last_sent: float | None = None
        self._last_step = -1
        self._stop = threading.Event()
        self.lr_moves = LrHistory()  # the lr changes it sent: the drift guardrail's memory
        self.lookahead = lookahead  # a LookaheadAgent: a decision's trials are tested, not applied blind

    def observe(self) -> Observation:
        st = self.client.status()
        m = self.client.metrics(keys=["loss", "eval/loss", "lr"])
        keys = self.client.metric_keys()
        hkeys = [k for k in keys if k.startswith("health/")]
        ekeys = [k for k in keys if k.startswith("eval/")]
        step = int(st.get("step", 0))
        health = self.client.metrics(keys=hkeys, since=max(0, step - 5000)) if hkeys else {}
        evals = self.client.metrics(keys=ekeys, since=max(0, step - 5000)) if ekeys else {}
        cmds = self.client.commands(limit=200)
        return Observation(
            step=step, status=str(st.get("status")), branch=str(st.get("branch")),
            lr=(m.get("lr", {}).get("value") or [None])[-1],
            loss=list(m.get("loss", {}).get("value", []))[-HISTORY:],
            loss_steps=list(m.get("loss", {}).get("step", []))[-HISTORY:],
            eval_loss=list(m.get("eval/loss", {}).get("value", []))[-HISTORY:],
            paused_by=_paused_by(cmds) if st.get("status") == "paused" else None,
            checkpoints=self.client.checkpoints(),
            own_actions=[c for c in cmds if c["source"] == "agent" and (c.get("comment") or "").startswith(f"[{self.name}]")],
            lr_history=list(m.get("lr", {}).get("value", []))[-HISTORY:],
            health={k: v["value"][-1] for k, v in health.items() if v.get("value")},
            evals={k: v["value"][-1] for k, v in evals.items() if v.get("value")},
            mixture=dict(self.client.snapshot().get("mixture") or {}),
        )

    def tick(self) -> dict[str, Any]:
        """One observe / decide / vet / act cycle; returns its journal entry."""
        obs = self.observe()
        entry: dict[str, Any] = {"time": time.time(), "agent": self.name, "step": obs.step, "status": obs.status,
                                 "lr": obs.lr, "loss_tail": obs.loss[-5:], "sent": [], "refused": []}
        try:
            decision = self.policy.decide(obs)
        except Exception as e:  # noqa: BLE001 - a policy's failure is journalled, never the run's
            log.warning("agent %s: policy failed: %s", self.name, e)
            entry.update(rationale=None, error=f"{type(e).__name__}: {e}"[:2000])
            self._finish(entry)
            return entry
        entry.update(rationale=decision.rationale, finding=decision.finding)
        if self._stop.is_set() and decision.commands:  # stopped while it decided: act no more
            entry["skipped"] = "the agent was stopped before it acted; nothing was sent"
            self._finish(entry)
            return entry
        since = None if self._last_sent is None else time.monotonic() - self._last_sent
        facts = obs.facts(since, self.lr_moves.within(obs.step, self.rails.drift_window_steps))
        if decision.trials and self.lookahead is not None:
            self._test(decision, obs, facts, entry)
            self._finish(entry)
            return entry
        refused = screen(decision.commands, obs, facts, self.rails)
        if refused:
            entry["refused"] = refused
            whys = "; ".join(r["why"] for r in refused if not r["why"].startswith(_NOT_SENT))
            entry["skipped"] = (f"not sent: {whys}" if len(refused) == 1 else
                                f"the decision cannot be carried out in full, so none of it was sent: {whys}")
            self._finish(entry)
            return entry
        for i, payload in enumerate(decision.commands):
            try:
                rec = self.client.submit({**payload, "comment": f"[{self.name}] {decision.rationale}"[:2000]},
                                         source="agent")
            except Exception as e:  # noqa: BLE001 - the run is unreachable: journalled, the agent goes on
                rec, failure = None, f"{type(e).__name__}: {e}"[:500]
            else:
                entry["sent"].append({"command": payload, "seq": rec.seq, "status": rec.status.value,
                                      "message": rec.message, "id": rec.id})
                failure = None if rec.status.value != "rejected" else f"the run rejected it: {rec.message}"
                lr = (payload.get("params") or {}).get("lr") if payload.get("kind") == "update_optimizer" else None
                if failure is None and lr is not None:
                    self.lr_moves.record(obs.step, obs.lr, float(lr))
            if failure is not None:  # the rest would act on a state the decision did not mean
                rest = decision.commands[i + 1:]
                entry["refused"] = [{"command": c, "why": f"{_NOT_SENT}: {payload['kind']} failed"} for c in rest]
                what = f"{payload['kind']} failed ({failure})"
                if i > 0:  # the run has the first part: say so, never pass it off as the whole
                    entry["partial"] = f"{what} after {i} of {len(decision.commands)} commands were sent"
                elif rest or rec is None:
                    entry["skipped"] = f"{what}; nothing of the decision took effect"
                break
        if entry["sent"]:
            self._last_sent = time.monotonic()
        self._finish(entry)
        return entry

    def _test(self, decision: Decision, obs: Observation, facts: RunFacts, entry: dict[str, Any]) -> None:
        """Hand the decision's trials to the lookahead: each that the guardrails pass is tried
        on its own branch against "keep", and the run goes on from the best."""

        moves = [Move("keep")]
        for trial in decision.trials:
            cmds = list(trial.get("commands") or [])
            refused = screen(cmds, obs, facts, self.rails) if cmds else []
            if refused:
                entry["refused"].extend(refused)
            elif cmds and all(m.name != trial["name"] for m in moves):
                moves.append(Move(str(trial["name"]), tuple(cmds)))
        if len(moves) == 1:
            entry["skipped"] = "nothing to test: every proposed move was refused or changes nothing"
            return
        explored = self.lookahead.explore(f"[{self.name}] {decision.rationale}"[:500], moves=moves)
        entry["tested"] = {k: explored.get(k) for k in (
            "chosen", "continued_on", "trials", "explored_steps", "kept_steps", "rationale", "error")}
        if explored.get("chosen") not in (None, "keep"):
            self._last_sent = time.monotonic()
            chosen = next(m for m in moves if m.name == explored["chosen"])
            for cmd in chosen.commands:
                lr = (cmd.get("params") or {}).get("lr") if cmd.get("kind") == "update_optimizer" else None
                if lr is not None:
                    self.lr_moves.record(obs.step, obs.lr, float(lr))
        st = self.client.status()  # the candidates' own evaluations are not new decision points
        self._eval_branch, self._last_eval = str(st.get("branch")), int(st.get("step", 0))
        self._last_step = int(st.get("step", 0))

    def _finish(self, entry: dict[str, Any]) -> None:
        self.journal.write(entry)
        if self.on_tick is not None:
            self.on_tick(entry)

    def run(self, poll_s: float = 0.5) -> None:
        """Tick every ``every`` steps (or at each evaluation) until :meth:`stop` or the run ends."""
        while not self._stop.is_set():
            st = self.client.status()
            if st.get("status") in ("stopped", "failed"):
                return
            if self._due(int(st.get("step", 0)), str(st.get("branch"))):
                self.tick()
            self._stop.wait(poll_s)

    def _due(self, step: int, branch: str) -> bool:
        if self.at_eval:
            if branch != self._eval_branch:  # a load began a new branch: its evaluations count afresh
                self._eval_branch, self._last_eval = branch, -1
            steps = self.client.metrics(keys=["eval/loss"], since=self._last_eval + 1).get("eval/loss", {}).get("step", [])
            if not steps:
                return False
            self._last_eval = int(steps[-1])
            return True
        if self._last_step < 0 or step - self._last_step >= self.every:
            self._last_step = step
            return True
        return False

    def stop(self) -> None:
        self._stop.set()
        if self.lookahead is not None:  # a test under way finishes its candidate and goes on from the best
            self.lookahead.stop()

    @property
    def exploring(self) -> bool:
        """Whether its lookahead is testing moves (the run is on a candidate's branch)."""
        return self.lookahead is not None and bool(self.lookahead.exploring)

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called (rather than the run ending)."""
        return self._stop.is_set()


#: The start of the reason a command that passed on its own was not sent (another part failed).
_NOT_SENT = "not sent"


def screen(commands: list[dict[str, Any]], obs: Observation, facts: RunFacts, rails: Guardrails) -> list[dict[str, Any]]:
    """Why the decision ``commands`` may not be sent, whole: ``[{"command", "why"}]`` for each
    of them when any part is refused (empty: all may go).

    Each command is vetted against the guardrails (the rate limit once: a decision is one
    action) and a checkpoint to load must be one of the run's.
    """
    whys: list[str | None] = []
    known = {c.get("id") for c in obs.checkpoints}
    for i, payload in enumerate(commands):
        why = vet(payload, facts if i == 0 else replace(facts, seconds_since_last=None), rails)
        if why is None and payload.get("kind") == "load_checkpoint":
            ckpt = payload.get("checkpoint_id")
            if ckpt is None:
                why = f"there is no finite checkpoint on branch {obs.branch!r} to reload"
            elif ckpt not in known:
                why = f"{ckpt!r} is not one of the run's checkpoints"
        whys.append(why)
    if all(w is None for w in whys):
        return []
    return [{"command": c, "why": w or f"{_NOT_SENT}: another part of this decision was refused"}
            for c, w in zip(commands, whys)]


def _paused_by(commands: list[dict[str, Any]]) -> str | None:
    """Who paused the run: the source of the newest applied pause (after any resume)."""
    for c in reversed(commands):
        if c["status"] == "applied" and c["kind"] in ("pause", "resume"):
            return c["source"] if c["kind"] == "pause" else None
    return None


__all__ = ["AgentRunner", "Decision", "Journal", "Observation", "Policy", "RulePolicy", "hottest_module", "screen",
           "update_ratios"]
