"""What a run's front-end can do, as the control UI needs to know it.

Each front-end (our Trainer, Ray Train DDP, a Hugging Face Trainer, a plain PyTorch loop)
says in its description which command kinds it refuses and why; whether it trains from
our data buffer (sources, a mixture, live rows) follows from which front-end it is; the
run's config says when it evaluates. :class:`Capabilities` reads all of it from one
dashboard refresh, so the UI offers only what can apply, says why the rest is off, and
fills its forms with the run's real settings. A finished run (read-only) takes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: How the UI names a front-end.
FRONTEND_NAMES = {"trainer": "our Trainer", "ddp": "Ray Train DDP", "hf": "Hugging Face Trainer",
                  "loop": "plain PyTorch loop"}
#: Front-ends that read their own data: no sources, no mixture, no live rows.
OWN_DATA = frozenset({"hf", "loop"})
READ_ONLY_WHY = "a finished run takes no commands (read-only)"


@dataclass(frozen=True)
class Capabilities:
    """What the run behind a dashboard can do (see the module docstring)."""

    frontend: str | None = None  # None: the run has not described itself yet
    read_only: bool = False
    unsupported: dict[str, str] = field(default_factory=dict)  # command kind -> why it cannot apply here
    live_sources: bool = False
    eval_every: int | None = None
    step: int = 0
    snapshot: dict[str, Any] = field(default_factory=dict)  # the run's settings (its last description)

    @classmethod
    def of(cls, state: dict[str, Any], read_only: bool = False) -> Capabilities:
        """From one dashboard refresh (``Dashboard.fetch``'s dict)."""
        status = state.get("status") or {}
        snapshot = state.get("snapshot") or {}
        sources = (state.get("data") or {}).get("sources") or {}
        return cls(
            frontend=snapshot.get("frontend") or status.get("frontend"),
            read_only=read_only or bool(status.get("finished")),
            unsupported=dict(snapshot.get("unsupported") or {}),
            live_sources=any(s.get("live") for s in sources.values()),
            eval_every=state.get("eval_every"),
            step=int(status.get("step") or 0),
            snapshot=snapshot,
        )

    @property
    def own_data(self) -> bool:
        """The loop reads its own data: data panels and the mixture cannot apply."""
        return self.frontend in OWN_DATA

    @property
    def name(self) -> str:
        return FRONTEND_NAMES.get(self.frontend or "", self.frontend or "a run not described yet")

    def why_not(self, kind: str) -> str | None:
        """Why a command of ``kind`` is not offered (None: it is)."""
        if self.read_only:
            return READ_ONLY_WHY
        why = self.unsupported.get(kind)
        if why is None and kind == "set_data_mixture" and self.own_data:
            why = f"the {self.name} reads its own data"
        return why

    def key(self) -> tuple[Any, ...]:
        """Changes exactly when what the UI offers changes."""
        return self.frontend, self.read_only, tuple(sorted(self.unsupported.items()))

    def markdown(self) -> str:
        """One line: the front-end, and what is not offered and why."""
        if self.read_only:
            return f"**{self.name}** · {READ_ONLY_WHY}: every control is off"
        if self.frontend is None:
            return "waiting for the run to describe itself"
        off = [f"`{k}` ({why})" for k, why in sorted(self.unsupported.items())]
        if self.own_data and "set_data_mixture" not in self.unsupported:
            off.append(f"`set_data_mixture` (the {self.name} reads its own data)")
        if self.own_data:
            off.append("data freshness (no live sources)")
        return f"**{self.name}** · " + ("not offered here: " + "; ".join(off) if off else "every command applies")

    def eval_note(self) -> str:
        """When the next evaluation is due (for the eval plot's title)."""
        if self.read_only:
            return ""  # none is due: the run has ended
        if why := self.unsupported.get("evaluate"):
            return f"no evaluation: {why}"
        if self.frontend == "hf":
            return "evaluates on the Trainer's eval_strategy (no eval_every)"
        if self.eval_every:
            nxt = (self.step // self.eval_every + 1) * self.eval_every
            return f"next at step {nxt} (every {self.eval_every})"
        return "on request only (no eval_every)"

    def freshness_empty(self) -> str:
        """What the data-freshness plot says while it has nothing."""
        if self.own_data:
            return f"the {self.name} reads its own data: no live sources"
        if self.frontend is not None and not self.live_sources and not self.read_only:
            return "this run has no live source: freshness is of rows ingested while it trains"
        return "no live rows trained on yet: ingest rows into a live source"

    # -- the run's settings, for the forms ----------------------------------------------
    def schedule_form(self) -> dict[str, Any] | None:
        """The current lr schedule as the schedule form's fields (None: not one of ours,
        e.g. a Hugging Face Trainer's own scheduler)."""
        s = self.snapshot.get("schedule") or {}
        if s.get("kind") == "hf":
            return None
        if s.get("ours"):  # a Hugging Face run under one of our schedules
            s = next((o for o in s["ours"] if o), {})
        if s.get("kind") not in ("constant", "linear", "cosine", "step"):
            return None
        return {"kind": s["kind"], "steps": s.get("steps"), "warmup": s.get("warmup_steps", 0),
                "min_lr_ratio": s.get("min_lr_ratio", 0.0), "gamma": s.get("gamma", 0.1)}

    def schedule_text(self) -> str:
        """The current schedule, said in words."""
        s = self.snapshot.get("schedule") or {}
        if not s:
            return ""
        form = self.schedule_form()
        if form is None:
            return f"now: the Trainer's own {s.get('scheduler', 'scheduler')}; setting one replaces it"
        over = f" over {form['steps']} steps" if form["steps"] else ""
        warm = f", {form['warmup']} warmup steps" if form["warmup"] else ""
        return f"now: {form['kind']}{over}{warm}"

    def first_lr(self) -> float | None:
        groups = self.snapshot.get("groups") or []
        lr = groups[0].get("hparams", {}).get("lr") if groups else None
        return lr if isinstance(lr, (int, float)) else None
