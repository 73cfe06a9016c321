"""The lookahead agent: at a decision point it tries its candidate moves on branches and
keeps the best, instead of applying a guess blind.

One exploration, on the run's own trainer, one branch after another, all through the
command API (so it works on every front-end that checkpoints):

1. pause the run and save a checkpoint ``C`` (step ``s``);
2. for each candidate move: load ``C`` as a new branch, apply the move's commands (an lr
   factor, clipping on, ...), train ``horizon`` steps (a pause pinned to ``s + horizon``,
   then resume), evaluate, and save the branch's end as a checkpoint. Loading ``C``
   restores its data position too, so every candidate trains on the same batches;
3. continue from the best end (the lowest evaluation loss; "keep" wins ties within
   ``margin``): on its own branch if it was the last one tried, else loaded as a new
   branch, and resume if the run was running.

Every explored branch stays in the run's tree. The journal (``agent-<name>.jsonl``) gets one
entry per exploration with every candidate's figures, the choice and why, and the compute:
``explored_steps`` (candidates x horizon) of which ``horizon`` are kept.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray_interactive.agents.detectors import diagnose
from ray_interactive.agents.journal import Journal

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Move:
    """A candidate move: a name (part of its branch's name) and the commands that make it."""

    name: str
    commands: tuple[dict[str, Any], ...] = ()

    @property
    def keeps(self) -> bool:
        """Whether this is the no-change candidate."""
        return not self.commands


def lr_moves(lr: float, factors: tuple[float, ...] = (0.5, 1.0, 2.0), clip: float | None = None) -> list[Move]:
    """Candidates around ``lr``: each factor (1.0: keep as is), and clipping at ``clip``."""
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"the run's lr {lr!r} is not a positive number: nothing to scale")
    moves = []
    for f in factors:
        if not (f > 0 and math.isfinite(f)):
            raise ValueError(f"an lr factor must be a positive number, not {f!r}")
        if f == 1.0:
            moves.append(Move("keep"))
        else:
            moves.append(Move(f"lr-x{f:g}", ({"kind": "update_optimizer", "params": {"lr": lr * f}},)))
    if clip is not None:
        moves.append(Move(f"clip-{clip:g}", ({"kind": "set_grad_clip", "max_norm": clip},)))
    return moves


@dataclass
class Trial:
    """One candidate tried: its branch, where it ended and how it scored."""

    move: Move
    branch: str
    end_checkpoint: str | None = None
    score: float = math.nan
    steps: int = 0
    error: str | None = None


def choose(trials: list[Trial], margin: float = 0.0) -> Trial | None:
    """The trial to continue from: the lowest finite score; a "keep" trial wins unless
    another is better by more than ``margin`` (relative). None when none has a score."""
    scored = [t for t in trials if t.error is None and math.isfinite(t.score) and t.end_checkpoint]
    if not scored:
        return None
    best = min(scored, key=lambda t: t.score)
    keep = next((t for t in scored if t.move.keeps), None)
    if keep is not None and best is not keep and best.score >= keep.score * (1 - margin):
        return keep
    return best


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:40]


class LookaheadAgent:
    """Explores candidate moves on branches of a run (a
    :class:`~ray_interactive.runtime.client.RunClient`) and continues on the best.

    ``moves(lr)`` makes the candidates from the run's lr (default: :func:`lr_moves`);
    ``metric`` is the evaluation figure compared (lower is better)."""

    def __init__(
        self, client: Any, horizon: int = 50, moves: Any = None, metric: str = "eval/loss", margin: float = 0.0,
        name: str = "lookahead", timeout_s: float = 600.0, journal: Journal | None = None,
        on_explore: Any = None,
    ) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be at least 1 step, not {horizon}")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin is a fraction in [0, 1), not {margin}")
        self.client, self.horizon, self.metric, self.margin = client, horizon, metric, margin
        self.moves = moves or (lambda lr: lr_moves(lr))
        self.name, self.timeout_s = name, timeout_s
        run_dir = Path(client.status()["run_dir"])
        self.journal = journal or Journal(run_dir / f"agent-{name}.jsonl")
        self.on_explore = on_explore  # sees each journal entry (the CLI prints it)
        self.explorations = 0
        self.exploring = False  # an exploration is under way (the run is on a candidate's branch)
        self._own: set[str] = set()  # the branches it made
        self.compute_steps = 0  # every step it had the run train, kept or not
        self._stop = threading.Event()

    # -- commands ----------------------------------------------------------------------
    def _do(self, why: str, kind: str, **fields: Any) -> Any:
        """Send a command (source agent, ``why`` as its comment) and wait until it is applied."""
        rec = self.client.submit({"kind": kind, **fields, "comment": f"[{self.name}] {why}"[:2000]}, source="agent")
        if rec.status.value == "rejected":
            raise RuntimeError(f"{kind} was rejected: {rec.message}")
        rec = self.client.wait(rec, timeout=self.timeout_s)
        if rec.status.value != "applied":
            raise RuntimeError(f"{kind} {rec.status.value}: {rec.message}")
        return rec

    def _wait_status(self, what: str, cond: Any) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            st = self.client.status()
            if cond(st):
                return st
            if st.get("status") in ("stopped", "failed"):
                raise RuntimeError(f"the run {st.get('status')} while the agent waited for {what}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {self.timeout_s:g} s for {what}")
            time.sleep(0.1)

    def _score(self, branch: str, step: int) -> float:
        series = self.client.metrics(keys=[self.metric], branch=branch, since=step).get(self.metric, {})
        values = [v for s, v in zip(series.get("step", []), series.get("value", [])) if s == step]
        return float(values[-1]) if values else math.nan

    # -- one exploration ---------------------------------------------------------------
    def explore(self, reason: str = "asked", moves: list[Move] | None = None,
                resume: bool | None = None) -> dict[str, Any]:
        """Try every candidate for ``horizon`` steps from here and continue on the best;
        returns the journal entry (also written). ``moves``: these candidates instead of the
        agent's own (e.g. what an LLM proposed, with "keep" among them). Once :meth:`stop` is
        called, the candidate under way is finished and the rest skipped: the run still goes
        on from the best so far. ``resume``: whether the run trains on afterwards (default:
        if it was running)."""
        self.exploring = True
        try:
            return self._explore(reason, moves, resume)
        finally:
            self.exploring = False

    def _explore(self, reason: str, proposed: list[Move] | None, resume: bool | None = None) -> dict[str, Any]:
        # Numbered after every lookahead branch already in the run, so a second agent (or
        # one restarted) never forks onto a name that is taken.
        taken = [int(m.group(1)) for b in self.client.branches() if (m := re.match(r"la(\d+)-", str(b)))]
        n = max([self.explorations, *taken]) + 1
        self.explorations += 1
        st = self.client.status()
        was_running = st.get("status") == "running" if resume is None else resume
        groups = self.client.snapshot().get("groups") or [{}]
        lr = groups[0].get("hparams", {}).get("lr") or self._lr()
        moves = list(proposed) if proposed else list(self.moves(lr))
        entry: dict[str, Any] = {"time": time.time(), "agent": self.name, "kind": "lookahead", "reason": reason,
                                 "horizon": self.horizon, "metric": self.metric, "lr": lr, "trials": []}
        try:
            if not st.get("status") == "paused":
                self._do(f"lookahead {n}: pause to try {len(moves)} moves", "pause")
            st = self._wait_status("the pause", lambda s: s.get("status") == "paused")
            start_branch, start = str(st["branch"]), int(st["step"])
            saved = self._do(f"lookahead {n}: the point the moves start from", "save_checkpoint", tag=f"la{n}-start")
            origin = str(saved.message).removeprefix("saved ")
            entry.update(step=start, branch=start_branch, checkpoint=origin)
            trials = []
            for move in moves:
                if self._stop.is_set() and trials:  # stopped: go on from the best so far
                    entry["cut_short"] = f"stopped after {len(trials)} of {len(moves)} candidates"
                    break
                trials.append(self._try(n, origin, start, move))
            entry["trials"] = [{"move": t.move.name, "branch": t.branch, "score": t.score, "steps": t.steps,
                                "end": t.end_checkpoint, "error": t.error} for t in trials]
            explored = sum(t.steps for t in trials)
            self.compute_steps += explored
            best = choose(trials, self.margin)
            if best is None:
                back = self._continue_from(n, origin, start_branch, was_running, "no candidate could be scored")
                entry.update(chosen=None, continued_on=back, rationale="no candidate could be scored: back where it began")
            else:
                on = self._continue_from(n, best.end_checkpoint, best.branch, was_running,
                                         f"best of {len(trials)}: {best.move.name}", last=trials[-1] is best)
                figures = ", ".join(f"{t.move.name} {t.score:.4g}" for t in trials if t.error is None)
                entry.update(chosen=best.move.name, continued_on=on,
                             rationale=(f"{reason}: tried {len(trials)} moves for {self.horizon} steps each from "
                                        f"{origin}; {self.metric}: {figures}; continuing with {best.move.name}"))
            entry.update(explored_steps=explored, kept_steps=self.horizon if best else 0,
                         compute_steps_total=self.compute_steps)
        except Exception as e:  # noqa: BLE001 - journalled; the run is left paused for a person to look at
            log.warning("lookahead %s failed: %s", n, e)
            entry["error"] = f"{type(e).__name__}: {e}"[:2000]
        self.journal.write(entry)
        if self.on_explore is not None:
            self.on_explore(entry)
        return entry

    def _lr(self) -> float:
        values = self.client.metrics(keys=["lr"]).get("lr", {}).get("value", [])
        if not values:
            raise RuntimeError("the run reports no lr to scale")
        return float(values[-1])

    def _try(self, n: int, origin: str, start: int, move: Move) -> Trial:
        branch = f"la{n}-{_slug(move.name)}"
        self._own.add(branch)
        trial = Trial(move, branch)
        # A rollback candidate (an LLM's "reload_and_half") starts from the checkpoint it
        # reloads, on the trial's own branch, and has its horizon from that checkpoint's step;
        # loading it after the origin would fork a branch the trial does not know.
        loads = [c for c in move.commands if c.get("kind") == "load_checkpoint"]
        source = str(loads[-1].get("checkpoint_id") or origin) if loads else origin
        try:
            self._do(f"lookahead {n}: try {move.name}", "load_checkpoint", checkpoint_id=source, branch=branch)
            if loads:
                start = int(self._wait_status(f"{branch} to be loaded", lambda s: s.get("branch") == branch)["step"])
            for cmd in move.commands:
                if cmd.get("kind") != "load_checkpoint":
                    self._do(f"lookahead {n}: {move.name}", **cmd)
            end = start + self.horizon
            pause = self.client.submit({"kind": "pause", "at_step": end, "comment": f"[{self.name}] lookahead {n}: "
                                        f"{move.name} has had its {self.horizon} steps"}, source="agent")
            if pause.status.value == "rejected":
                raise RuntimeError(f"pause at step {end} was rejected: {pause.message}")
            self._do(f"lookahead {n}: train {move.name} for {self.horizon} steps", "resume")
            self.client.wait(pause, timeout=self.timeout_s)
            self._wait_status(f"{branch} to pause at step {end}",
                              lambda s: s.get("status") == "paused" and s.get("branch") == branch and s.get("step") == end)
            trial.steps = self.horizon
            self._do(f"lookahead {n}: score {move.name}", "evaluate")
            trial.score = self._score(branch, end)
            saved = self._do(f"lookahead {n}: the end of {move.name}", "save_checkpoint", tag=f"la{n}-{_slug(move.name)}")
            trial.end_checkpoint = str(saved.message).removeprefix("saved ")
        except Exception as e:  # noqa: BLE001 - this candidate failed; the others are still compared
            trial.error = f"{type(e).__name__}: {e}"[:500]
        return trial

    def _continue_from(self, n: int, checkpoint: str | None, branch: str, resume: bool, why: str,
                       last: bool = False) -> str:
        """Go on from ``checkpoint``: where the run is if it is the last one tried, else loaded
        as a new branch; resume if the run was running. Returns the branch."""
        st = self.client.status()
        on = str(st["branch"])
        if not last or checkpoint is None:
            on = f"la{n}-go-{_slug(branch)}"[:64]
            self._own.add(on)
            self._do(f"lookahead {n}: continue on {why}", "load_checkpoint", checkpoint_id=checkpoint, branch=on)
        if resume:
            self._do(f"lookahead {n}: {why}", "resume")
        return on

    # -- when to explore ---------------------------------------------------------------
    def run(self, every: int = 200, on_detector: bool = True, poll_s: float = 0.5, min_points: int = 20,
            at_start: bool = False, end_step: int | None = None) -> None:
        """Explore every ``every`` steps of the run's progress, and (``on_detector``) as soon
        as the loss since the last exploration shows a divergence, oscillation or plateau;
        until :meth:`stop` or the run ends. ``at_start``: the first exploration as soon as the
        run trains (an lr check before the run commits to one); ``end_step`` (the run's
        max_steps): no exploration starts whose candidates could not finish by then. A run
        that starts paused (``start_paused``) and that nobody has paused or resumed yet is
        explored before its first step, then resumed: every candidate starts from the
        initial weights, none after a step at an lr it may be about to reject."""
        last_step: int | None = None
        last_branch = ""
        first = at_start
        while not self._stop.is_set():
            st = self.client.status()
            if st.get("status") in ("stopped", "failed"):
                return
            step, branch = int(st.get("step", 0)), str(st.get("branch"))
            if last_step is None or (branch != last_branch and branch not in self._own):  # a person's load
                last_step, last_branch = step, branch
            reason = None
            if end_step is not None and step + self.horizon >= end_step:
                reason = None  # too late: a candidate would run past the run's end
            elif first and st.get("status") == "paused" and step == 0 and self._paused_at_start():
                first = False
                entry = self.explore("before the run's first step", resume=True)
                st = self.client.status()
                last_step, last_branch = int(st.get("step", 0)), str(st.get("branch"))
                if "error" in entry:
                    return
                continue
            elif first and st.get("status") == "running":
                reason, first = "the run's start", False
            elif st.get("status") == "running" and step - last_step >= every:
                reason = f"every {every} steps"
            elif st.get("status") == "running" and on_detector:
                m = self.client.metrics(keys=["loss"], branch=branch, since=last_step + 1).get("loss", {})
                found = diagnose(list(m.get("value", []))) if len(m.get("value", [])) >= min_points else None
                if found is not None:
                    reason = f"{found.pattern}: {found.reason}"
            if reason is not None:
                entry = self.explore(reason)
                st = self.client.status()
                last_step, last_branch = int(st.get("step", 0)), str(st.get("branch"))
                if "error" in entry:
                    return  # journalled; the run is left as the failure left it, for a person
            self._stop.wait(poll_s)

    def _paused_at_start(self) -> bool:
        """Paused because it started so: no pause or resume was ever sent to it."""
        return not any(c.get("kind") in ("pause", "resume") for c in self.client.commands())

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called (rather than the run ending)."""
        return self._stop.is_set()


__all__ = ["LookaheadAgent", "Move", "Trial", "choose", "lr_moves"]
