"""Guardrails of the agent runtime: what any policy (rules, an LLM) may send, checked before
a command leaves. Policies propose; :func:`vet` refuses with a reason (journalled), so a
policy - or a model's reply - never needs to be trusted.

* only the command kinds in ``allowed``;
* an lr change of at most ``lr_factor_max`` up and ``lr_factor_min`` down per decision,
  and never outside ``[lr_min, lr_max]``;
* over time, an lr at most ``max_lr_drift`` times above or below any lr this agent left or
  set within the last ``drift_window_steps`` steps (:class:`LrHistory`): each decision's
  bound alone let an agent halve the lr at every decision, 128x in seven;
* at most one command every ``min_interval_s`` (a rate limit);
* never ``resume`` a run that a person (UI, CLI, API) paused.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ray_interactive.core.commands import KINDS

#: Sources that are a person (or a person's script): a pause by one of them is theirs to lift.
PERSON_SOURCES = frozenset({"ui", "cli", "api"})


class Guardrails(BaseModel):
    """The limits every agent decision is checked against (validated config)."""

    model_config = ConfigDict(extra="forbid")

    allowed: frozenset[str] = Field(
        default_factory=lambda: frozenset(k for k, cls in KINDS.items() if cls.for_agents),
        description="command kinds an agent may send (default: every kind marked for agents)",
    )
    lr_factor_min: float = Field(default=0.5, gt=0.0, le=1.0, description="smallest lr multiplier per decision")
    lr_factor_max: float = Field(default=2.0, ge=1.0, le=100.0, description="largest lr multiplier per decision")
    lr_min: float = Field(default=1e-7, gt=0.0, description="the lr never goes below this")
    lr_max: float = Field(default=1.0, gt=0.0, le=10.0, description="the lr never goes above this")
    min_interval_s: float = Field(default=10.0, ge=0.0, le=86400.0, description="at most one command this often")
    max_lr_drift: float = Field(default=10.0, ge=1.0, le=1e6,
                                description="the lr moves at most this factor, up or down, within the drift window")
    drift_window_steps: int = Field(default=500, ge=1, le=10**9, description="the drift window, in the run's steps")

    @field_validator("allowed")
    @classmethod
    def _known_kinds(cls, v: frozenset[str]) -> frozenset[str]:
        unknown = sorted(set(v) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown command kind(s) {', '.join(unknown)}; kinds: {', '.join(sorted(KINDS))}")
        return v

    @model_validator(mode="after")
    def _bounds(self) -> Guardrails:
        if self.lr_min > self.lr_max:
            raise ValueError(f"lr_min {self.lr_min} is above lr_max {self.lr_max}")
        return self


@dataclass(frozen=True)
class RunFacts:
    """What the guardrails need to know about the run when a decision is checked."""

    lrs: list[float]  # the current lr of each param group
    paused_by: str | None  # source of the pause in force (None: not paused)
    seconds_since_last: float | None  # since this agent's last command (None: never sent one)
    window_lrs: tuple[float, ...] = ()  # the lrs this agent left or set within the drift window


@dataclass(frozen=True)
class LrMove:
    """An lr the run had at ``step``: one side of a change an agent sent."""

    step: int
    lr: float


class LrHistory:
    """The lr changes one agent sent (from and to), for the drift guardrail."""

    def __init__(self, keep: int = 256) -> None:
        self.moves: deque[LrMove] = deque(maxlen=keep)  # a window holds a few moves: older ones drop off

    def record(self, step: int, before: float | None, after: float) -> None:
        if before is not None:
            self.moves.append(LrMove(step, before))
        self.moves.append(LrMove(step, after))

    def within(self, step: int, window: int) -> tuple[float, ...]:
        """The lrs of the moves in the ``window`` steps up to ``step`` (and any at later steps:
        after a load went back to an earlier checkpoint they still count)."""
        return tuple(m.lr for m in self.moves if m.step > step - window)


def vet(payload: dict[str, object], facts: RunFacts, rails: Guardrails) -> str | None:
    """Why ``payload`` may not be sent (None: it may)."""
    kind = payload.get("kind")
    if kind not in rails.allowed:
        return f"{kind!r} is not among the kinds this agent may send ({', '.join(sorted(rails.allowed))})"
    if facts.seconds_since_last is not None and facts.seconds_since_last < rails.min_interval_s:
        return (f"rate limit: the last command was {facts.seconds_since_last:.1f} s ago, at most one every "
                f"{rails.min_interval_s:g} s")
    if kind == "resume" and facts.paused_by in PERSON_SOURCES:
        return f"the run was paused by a person ({facts.paused_by}); only they resume it"
    if kind == "update_optimizer":
        params = payload.get("params")
        lr = params.get("lr") if isinstance(params, dict) else None
        if lr is not None:
            return _vet_lr(lr, facts.lrs, rails) or _vet_drift(lr, facts, rails)
    return None


#: Slack on the drift bound, so that 10x is allowed at max_lr_drift=10 despite rounding.
_EPS = 1e-9


def _vet_drift(lr: float, facts: RunFacts, rails: Guardrails) -> str | None:
    seen = [v for v in (*facts.window_lrs, *facts.lrs) if v > 0]
    if not seen:
        return None
    hi, lo = max(seen), min(seen)
    limit = (f"an agent may move the lr at most {rails.max_lr_drift:g}x within {rails.drift_window_steps} steps "
             f"(max_lr_drift, drift_window_steps)")
    if lr * rails.max_lr_drift < hi * (1 - _EPS):
        return f"lr {lr:g} is {hi / lr:.3g}x below {hi:g}, the lr within the last {rails.drift_window_steps} steps; {limit}"
    if lr > lo * rails.max_lr_drift * (1 + _EPS):
        return f"lr {lr:g} is {lr / lo:.3g}x above {lo:g}, the lr within the last {rails.drift_window_steps} steps; {limit}"
    return None


def _vet_lr(lr: object, current: list[float], rails: Guardrails) -> str | None:
    if not isinstance(lr, int | float) or isinstance(lr, bool) or not lr > 0:
        return f"lr must be a positive number, not {lr!r}"
    if not rails.lr_min <= lr <= rails.lr_max:
        return f"lr {lr:g} is outside [{rails.lr_min:g}, {rails.lr_max:g}]"
    for now in current:
        if now > 0 and not rails.lr_factor_min <= lr / now <= rails.lr_factor_max:
            return (f"lr {lr:g} is {lr / now:.3g}x the current {now:g}; one decision may change it by "
                    f"{rails.lr_factor_min:g}x to {rails.lr_factor_max:g}x")
    return None
