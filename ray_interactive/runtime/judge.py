"""The judge of a guarded rollout: evaluates each canary version against the stable one with
the user's own evaluation, and sends the verdict as a command.

    judge = ri.CanaryJudge(run, build_model(), evaluate=lambda m: {"loss": heldout_loss(m)}).start()

``evaluate(module) -> {figure: value}`` is called with ``module`` holding the version's
weights (the canary's, then the stable one's, each evaluated once and remembered); the
run's ``rollout.guards`` name the figures that decide (:func:`~ray_interactive.core.rollout.decide`).
The verdict goes to the run as ``promote_version`` or ``rollback_version`` with
``source: system``, the figures of both sides and the reasons: every decision is in the
command history. The judge runs wherever the evaluation can (a process with the model and
its held-out data: the app in front of the replicas, or an actor of its own).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ray_interactive.core.config import Guard
from ray_interactive.core.rollout import decide
from ray_interactive.core.weights import load_version

if TYPE_CHECKING:
    import torch

    from ray_interactive.runtime.client import RunClient

log = logging.getLogger(__name__)


class CanaryJudge:
    """Judges the canaries of ``client``'s run; :meth:`judge_once` makes one decision if a
    canary waits for one, :meth:`start` does so in a background thread. ``min_canary_s``:
    let the canary serve live traffic at least this long before the verdict."""

    def __init__(
        self,
        client: RunClient,
        module: torch.nn.Module,
        evaluate: Callable[[torch.nn.Module], dict[str, float]],
        poll_s: float = 0.5,
        min_canary_s: float = 0.0,
    ) -> None:
        self.client = client
        self.module = module
        self.evaluate = evaluate
        self.poll_s = poll_s
        self.min_canary_s = min_canary_s
        # Version 0: what a loaded version overwrote, as it was (a copy of only what versions
        # carry: an adapter's tensors, not a 540 MB base, when they are partial).
        self._base: dict[str, Any] = {}
        self.figures: dict[int, dict[str, float]] = {}
        self.verdicts: list[dict[str, Any]] = []
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _figures_of(self, version: int, known: dict[str, dict[str, float]]) -> dict[str, float]:
        if version in self.figures:
            return self.figures[version]
        if version and str(version) in known and known[str(version)]:  # judged before (by this judge or another)
            self.figures[version] = known[str(version)]
            return self.figures[version]
        import torch

        if version == 0:
            self.module.load_state_dict(self._base, strict=False)
        else:
            entry, state = self.client.weights(version)
            own = self.module.state_dict()
            for k in state:
                if k not in self._base and k in own:
                    self._base[k] = own[k].detach().clone()
            load_version(self.module, state, entry)
        with torch.inference_mode():
            figs = {k: float(v) for k, v in self.evaluate(self.module).items()}
        self.figures[version] = figs
        return figs

    def judge_once(self) -> dict[str, Any] | None:
        """Decide on the canary if one waits; returns the verdict sent (None: nothing to do)."""
        r = self.client.rollout()
        canary = r["canary"]
        if canary is None:
            return None
        waited = time.time() - (r["canary_since"] or time.time())
        if waited < self.min_canary_s:
            return None
        t0 = time.time()
        canary_figs = self._figures_of(canary, {})
        stable_figs = self._figures_of(r["stable"], r["figures"])
        guards = {k: Guard.model_validate(g) for k, g in r["guards"].items()}
        base_figs = self._figures_of(0, r["figures"]) if any(g.against == "base" for g in guards.values()) else None
        verdict = decide(stable_figs, canary_figs, guards, base_figs)
        kind = "promote_version" if verdict.promote else "rollback_version"
        figures = {"canary": canary_figs, "stable": stable_figs, "stable_version": r["stable"], "reasons": verdict.reasons,
                   **({"base": base_figs} if base_figs is not None else {}),
                   "judged_in_s": round(time.time() - t0, 3), "canary_for_s": round(time.time() - (r["canary_since"] or t0), 3)}
        rec = self.client.send(kind, source="system", version=canary, figures=figures,
                               comment=f"the canary judge: {'; '.join(verdict.reasons)}"[:2000])
        out = {"version": canary, "kind": kind, "status": rec.status.value, "message": rec.message, **figures}
        self.verdicts.append(out)
        log.info("canary judge: version %d %s (%s)", canary, kind, rec.message)
        return out

    def start(self) -> CanaryJudge:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="canary-judge", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.judge_once() is not None:
                    continue  # the next canary may already wait
            except Exception as e:  # the run restarting, a version no longer kept: try again
                self.last_error = f"{type(e).__name__}: {e}"
                log.warning("canary judge: %s", self.last_error)
                self._stop.wait(2.0)
            self._stop.wait(self.poll_s)
