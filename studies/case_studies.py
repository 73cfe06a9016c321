"""The paper's case studies 1 and 2, CPU-sized: a small GPT-2 (from a config, GPT-2's
tokenizer) trained from scratch on WikiText-2 with our own loop, each arm with several seeds.

Case study 1 - a person in the loop: a too-high constant lr (static); the same start with a
scripted person who watches the control UI's loss plot and lowers the lr through the UI's
own endpoints (gradio_client) when the loss stops improving and jumps around; and a small
grid of static lrs (the best one is the reference).

Case study 2 - an LLM in the loop: lr 5e-3 constant with no intervention; the rule agent;
the LLM agent (the local SmolLM2-135M-Instruct over the OpenAI protocol, or --llm-url);
a cosine decay from the same start; Schedule-Free AdamW; Prodigy.

    python studies/case_studies.py --study 1 --seeds 0 1 2
    python studies/case_studies.py --study 2 --seeds 0 1 2 [--llm-url URL --llm-model M]
    python studies/plot_case_studies.py            # tables and plots in docs/

Every run's metrics, commands and the agents' journals stay in its run directory
(``--runs``); the results JSON (``docs/case_study_<n>.json``) is rewritten after each run,
so an interrupted study keeps what it finished and ``--skip-done`` continues it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # pbt_baseline, next to this file
DATA = Path(os.environ.get("RI_SHARED_DATA", REPO.parent / "shared" / "data"))
log = logging.getLogger("case_studies")


@dataclass(frozen=True)
class Arm:
    name: str
    lr: float
    label: str
    optimizer: str = "adamw"
    schedule: str = "constant"
    steerer: str | None = None  # "person", "rule", "rule_health", "llm", "lookahead", "llm_check", "pbt"
    factors: tuple[float, ...] | None = None  # the lookahead's lr factors (default: Setup.la_factors)
    horizon: int | None = None  # the lookahead's steps per candidate (default: Setup.la_horizon)
    every: int | None = None  # the lookahead's steps between decisions (default: Setup.la_every)
    start_paused: bool = False  # the run waits for its first resume (a lookahead then explores before step 1)


HIGH_LR = 2e-2  # case study 1's too-high lr, chosen by the short sweep of study 0 (see the README)
PAPER_LR = 5e-3  # case study 2's start, as in the paper
#: transformer.h.0's update/weight ratio threshold, fitted on seed 0 in docs/health_indicators.md
UPDATE_CEILING = 0.008
DIAGNOSTICS_EVERY = 10  # as in that study

STUDIES: dict[int, list[Arm]] = {
    # study 0: the short sweep that chose case study 1's too-high lr
    0: [Arm(f"static_{lr:g}", lr, f"constant lr {lr:g}") for lr in (5e-2, 2e-2, 5e-3, 1e-3)],
    1: [
        Arm("static_high", HIGH_LR, f"constant lr {HIGH_LR:g} (too high)"),
        Arm("person", HIGH_LR, f"lr {HIGH_LR:g} + a person via the UI", steerer="person"),
        Arm("static_5e-3", 5e-3, "constant lr 5e-3 (grid)"),
        Arm("static_1e-3", 1e-3, "constant lr 1e-3 (grid)"),
        Arm("static_3e-4", 3e-4, "constant lr 3e-4 (grid)"),
        Arm("lookahead", HIGH_LR, f"lr {HIGH_LR:g} + lookahead agent (x1/3, x1, x3)", steerer="lookahead"),
        Arm("lookahead_decay", HIGH_LR, f"lr {HIGH_LR:g} + lookahead agent, decay only (x1/10, x1/3, x1)",
            steerer="lookahead", factors=(0.1, 1 / 3, 1.0)),
        # candidates that reach as far as the grid does (2e-2 x 1/20 = 1e-3) in one decision
        Arm("lookahead_wide", HIGH_LR, f"lr {HIGH_LR:g} + lookahead agent, wide (x1/20, x1/4, x1)",
            steerer="lookahead", factors=(0.05, 0.25, 1.0)),
        # fewer, longer trials (what the three arms above taught: a 25-step trial favours the
        # higher lr): the same candidates for 50 steps, decided at the start and at step 200;
        # 2 decisions x 2 discarded x 50 = 200 extra steps, the same 1.5x budget
        Arm("lookahead_long", HIGH_LR, f"lr {HIGH_LR:g} + lookahead agent, long trials (x1/20, x1/4, x1; 50 steps)",
            steerer="lookahead", factors=(0.05, 0.25, 1.0), horizon=50, every=150),
        # the same, but the run starts paused, so its first look comes before the first step:
        # the arms above look after one step at the too-high lr, which alone costs the 1e-3
        # candidate ~0.1 at step 50 and ~0.16 at the end (lookahead_long, seed 1)
        Arm("lookahead_first", HIGH_LR, f"lr {HIGH_LR:g} + lookahead agent from before the first step "
            "(x1/20, x1/4, x1; 50 steps)", steerer="lookahead", factors=(0.05, 0.25, 1.0), horizon=50, every=150,
            start_paused=True),
        Arm("rule_high", HIGH_LR, f"lr {HIGH_LR:g} + rule agent", steerer="rule"),
        # the rule agent with the health study's indicator: halve while block 0's sampled
        # update/weight ratio is above the ceiling that study fitted on seed 0's grid
        Arm("rule_health", HIGH_LR, f"lr {HIGH_LR:g} + rule agent with an update-ratio ceiling "
            f"(transformer.h.0 {UPDATE_CEILING:g})", steerer="rule_health"),
        Arm("pbt", HIGH_LR, f"Ray Tune PBT from lr {HIGH_LR:g}, same budget", steerer="pbt"),
        Arm("llm_check", HIGH_LR, f"lr {HIGH_LR:g} + LLM agent, moves tested (lookahead)", steerer="llm_check"),
        Arm("llm_high", HIGH_LR, f"lr {HIGH_LR:g} + LLM agent (SmolLM2-135M)", steerer="llm"),
        Arm("cosine_high", HIGH_LR, f"cosine decay from lr {HIGH_LR:g}", schedule="cosine"),
        Arm("schedulefree_high", HIGH_LR, f"Schedule-Free AdamW, lr {HIGH_LR:g}", optimizer="schedulefree"),
    ],
    2: [
        Arm("static_5e-3", PAPER_LR, f"constant lr {PAPER_LR:g}, no intervention"),
        Arm("rule", PAPER_LR, "rule agent", steerer="rule"),
        Arm("llm", PAPER_LR, "LLM agent (SmolLM2-135M)", steerer="llm"),
        Arm("cosine", PAPER_LR, "cosine decay (no agent)", schedule="cosine"),
        Arm("schedulefree", PAPER_LR, "Schedule-Free AdamW (no agent)", optimizer="schedulefree"),
        Arm("prodigy", 1.0, "Prodigy, lr 1.0 (no agent)", optimizer="prodigy"),
        # at equal compute (1.5x one run), as in study 1
        Arm("lookahead_first", PAPER_LR, "lookahead agent from before the first step (x1/20, x1/4, x1; 50 steps)",
            steerer="lookahead", factors=(0.05, 0.25, 1.0), horizon=50, every=150, start_paused=True),
        Arm("pbt", PAPER_LR, f"Ray Tune PBT from lr {PAPER_LR:g}, same budget", steerer="pbt"),
        Arm("llm_check", PAPER_LR, "LLM agent, moves tested (lookahead)", steerer="llm_check"),
    ],
}


@dataclass
class Setup:
    steps: int = 400
    eval_every: int = 50
    batch_size: int = 8
    context: int = 32
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    train_tokens: int = 600_000
    eval_tokens: int = 8192
    person_every: int = 50  # steps between the person's looks at the plot
    # the lookahead agent: at the start and every 75 steps, lr x1/3, x1, x3 tried for 25 steps each
    # (4 explorations x 2 discarded candidates x 25 = 200 extra steps: 1.5x one run)
    la_horizon: int = 25
    la_every: int = 75
    la_factors: tuple[float, ...] = (1 / 3, 1.0, 3.0)
    # PBT with the same budget (1.5 runs): 3 trials of 200 steps, exploit/explore every 25
    pbt_population: int = 3
    pbt_steps: int = 200
    pbt_interval: int = 25
    extra: dict[str, Any] = field(default_factory=dict)


def run_config(arm: Arm, seed: int, setup: Setup, runs: Path, study: int) -> Any:
    from ray_interactive.core.config import HealthConfig, RunConfig, ScheduleConfig, TaskSpec

    kwargs = dict(data_dir=str(DATA / "wikitext-2"), tokenizer_dir=str(DATA / "gpt2-tokenizer"),
                  context=setup.context, n_layer=setup.n_layer, n_embd=setup.n_embd, n_head=setup.n_head,
                  dropout=0.0, max_train_tokens=setup.train_tokens, eval_tokens=setup.eval_tokens,
                  optimizer=arm.optimizer)
    schedule = ScheduleConfig(kind="cosine", steps=setup.steps) if arm.schedule == "cosine" else ScheduleConfig()
    name = f"cs{study}-{arm.name}-s{seed}".replace("_", "-").replace(".", "")
    return RunConfig(
        name=name, task=TaskSpec(target="ray_interactive.examples.case_study:CaseStudyLM", kwargs=kwargs),
        run_dir=runs / name, seed=seed, lr=arm.lr, schedule=schedule, batch_size=setup.batch_size,
        max_steps=setup.steps, eval_every=setup.eval_every, checkpoint_every=setup.eval_every, checkpoint_keep=3,
        checkpoint_interval_s=None, torch_threads=2, metrics_interval_s=0.5,
        # a non-finite step is skipped (never applied); a run that keeps failing pauses and is ended below
        health=HealthConfig(on_non_finite="skip", max_skips=20),
        diagnostics_every=DIAGNOSTICS_EVERY if arm.steerer == "rule_health" else None,
        start_paused=arm.start_paused,
    )


# -- the steerers ----------------------------------------------------------------------
class Person:
    """A scripted person at the control UI: every ``every`` steps they look at the loss plot
    (the smoothed line the UI draws, and the raw one) and, if the loss has not improved over
    the last 100 steps by 2 % while the raw line jumps around, they divide the lr by 3 in the
    Optimizer tab - the UI's own ``/update_optimizer`` endpoint, through gradio_client."""

    def __init__(self, client: Any, every: int) -> None:
        from gradio_client import Client

        from ray_interactive.ui.control_ui import serve_control_ui

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.ui, url = serve_control_ui(client, port=port, block=False, refresh_s=3600, command_wait_s=30.0)
        self.gc = Client(url, verbose=False)
        self.client, self.every = client, every
        self.actions: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True, name="person")

    def _plot(self) -> tuple[list[float], list[float], list[float]]:
        out = self.gc.predict("step", 0.9, False, None, None, None, "update_ratio", None, api_name="/refresh")
        traces = {t["name"]: t for t in json.loads(out[1]["plot"])["data"]}
        raw, smooth = traces.get("main raw"), traces.get("main")
        if raw is None or smooth is None:
            return [], [], []
        return raw["x"], [v if v is not None else math.nan for v in raw["y"]], smooth["y"]

    def _watch(self) -> None:
        last_look, last_act = 0, -10**9
        lr = None
        while not self._stop.is_set():
            st = self.client.status()
            if st.get("status") in ("stopped", "failed"):
                return
            step = int(st.get("step", 0))
            if step - last_look >= self.every and step >= 100:
                last_look = step
                xs, raw, smooth = self._plot()
                window = [i for i, x in enumerate(xs) if x > step - 100]
                if len(window) >= 20 and step - last_act >= 100:
                    s0, s1 = smooth[window[0]], smooth[window[-1]]
                    jumps = [abs(raw[i] - smooth[i]) for i in window if math.isfinite(raw[i])]
                    jumpy = sum(jumps) / max(len(jumps), 1) > 0.02 * s1
                    if s1 > 0.98 * s0 and jumpy:  # little progress and a jumpy line: too high an lr
                        lr = lr or self.client.snapshot()["groups"][0]["hparams"]["lr"]
                        lr = float(f"{lr / 3:.1g}")  # a person types a round number
                        msg = self.gc.predict("all", "lr", f"{lr:g}", api_name="/update_optimizer")
                        last_act = step
                        self.actions.append({"step": step, "lr": lr, "ui_message": msg,
                                             "why": f"smoothed loss {s0:.3f} -> {s1:.3f} over 100 steps, jumpy"})
            self._stop.wait(0.5)

    def start(self) -> Person:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=30)
        self.ui.close()


class Agent:
    """The rule or LLM agent, deciding at each evaluation (as the paper's agent did); with
    ``horizon``, each move it proposes is first tried on a branch against keeping the lr."""

    def __init__(self, client: Any, policy: Any, horizon: int | None = None) -> None:
        from ray_interactive.agents.guardrails import Guardrails
        from ray_interactive.agents.lookahead import LookaheadAgent
        from ray_interactive.agents.runtime import AgentRunner

        self.look = None if horizon is None else LookaheadAgent(client, horizon=horizon, name="llm-check",
                                                                 timeout_s=900)
        # time-based rate limit off: the cadence (one decision per evaluation) is the limit here
        self.runner = AgentRunner(client, policy, Guardrails(min_interval_s=0.0), at_eval=True, lookahead=self.look)
        self.thread = threading.Thread(target=self.runner.run, kwargs={"poll_s": 0.2}, daemon=True, name="agent")

    def start(self) -> Agent:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.runner.stop()
        self.thread.join(timeout=900 if self.runner.exploring else 60)

    def extra_steps(self) -> int:
        """Steps trained on branches it did not go on with."""
        return _discarded(self.look)


class Lookahead:
    """The lookahead agent: at the run's start and every ``la_every`` steps it tries the lr
    factors for ``la_horizon`` steps each on branches and goes on from the best."""

    def __init__(self, client: Any, setup: Setup, arm: Arm) -> None:
        from ray_interactive.agents.lookahead import LookaheadAgent, lr_moves

        factors = arm.factors or setup.la_factors
        self.look = LookaheadAgent(client, horizon=arm.horizon or setup.la_horizon, timeout_s=900,
                                   moves=lambda lr: lr_moves(lr, factors))
        kwargs = {"every": arm.every or setup.la_every, "on_detector": False, "poll_s": 0.2, "at_start": True,
                  "end_step": setup.steps}
        self.thread = threading.Thread(target=self.look.run, kwargs=kwargs, daemon=True, name="lookahead")

    def start(self) -> Lookahead:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.look.stop()
        self.thread.join(timeout=900)

    def extra_steps(self) -> int:
        return _discarded(self.look)


def _discarded(look: Any) -> int:
    """The steps a lookahead trained on candidates it did not go on with (from its journal)."""
    if look is None:
        return 0
    return sum(int(e.get("explored_steps", 0)) - int(e.get("kept_steps", 0)) for e in look.journal.read()
               if e.get("kind") == "lookahead")


# -- one run ---------------------------------------------------------------------------
def wait_to_end(client: Any, steerer: Any = None) -> None:
    """Until the run has stopped or failed; a run the health guard paused (it gave up on a
    run that kept failing), or one left paused by a lookahead that has ended (its journal
    says why), is stopped."""
    while True:
        st = client.status()
        if st.get("status") in ("stopped", "failed"):
            return
        left = isinstance(steerer, Lookahead) and not steerer.thread.is_alive()
        if st.get("status") == "paused" and ("health guard" in str(st.get("message")) or left):
            client.send("stop", source="api")
        time.sleep(1.0)


def run_arm(arm: Arm, seed: int, setup: Setup, runs: Path, study: int, llm: Any,
            keep_checkpoints: bool = False) -> dict[str, Any]:
    from ray_interactive.runtime.launch import start_run

    cfg = run_config(arm, seed, setup, runs, study)
    if arm.steerer == "pbt":
        return run_pbt_arm(arm, seed, setup, runs, cfg)
    if cfg.run_dir.exists():  # a leftover of an interrupted study: start afresh
        import shutil

        shutil.rmtree(cfg.run_dir)
    t0 = time.monotonic()
    handle = start_run(cfg)
    client = handle.client()
    steerer: Any = None
    try:
        if arm.steerer == "person":
            steerer = Person(client, setup.person_every).start()
        elif arm.steerer == "rule":
            from ray_interactive.agents.runtime import RulePolicy

            steerer = Agent(client, RulePolicy()).start()
        elif arm.steerer == "rule_health":
            from ray_interactive.agents.runtime import RulePolicy

            steerer = Agent(client, RulePolicy(update_ceiling={"transformer.h.0": UPDATE_CEILING})).start()
        elif arm.steerer == "llm":
            steerer = Agent(client, llm()).start()
        elif arm.steerer == "llm_check":
            policy = llm()
            policy.check = True
            steerer = Agent(client, policy, horizon=setup.la_horizon).start()
        elif arm.steerer == "lookahead":
            steerer = Lookahead(client, setup, arm).start()
        wait_to_end(client, steerer)
    finally:
        if steerer is not None:
            steerer.stop()
    # the final branch with its ancestors: an agent's load starts a new branch from a checkpoint
    m = client.metrics(keys=["loss", "eval/loss", "lr", "step_time_s"], include_ancestors=True)
    commands = [c for c in client.commands() if c["source"] in ("agent", "ui")]
    extra = steerer.extra_steps() if hasattr(steerer, "extra_steps") else 0
    status = client.status()
    handle.shutdown()
    if not keep_checkpoints:  # ~80 MB each; the metrics, command log and journals stay
        import shutil

        shutil.rmtree(cfg.run_dir / "checkpoints", ignore_errors=True)
    ev = m.get("eval/loss", {"step": [], "value": []})
    loss = m.get("loss", {"step": [], "value": []})
    every = max(1, len(loss["step"]) // 200)
    step_times = sorted(m.get("step_time_s", {}).get("value", []))
    return {
        "arm": arm.name, "seed": seed, "label": arm.label, "lr": arm.lr, "optimizer": arm.optimizer,
        "schedule": arm.schedule, "steerer": arm.steerer, "status": status.get("status"),
        "steps": status.get("step"), "branch": status.get("branch"), "wall_s": round(time.monotonic() - t0, 1),
        # every optimizer step the arm paid for: the run's own and those on branches it left
        "compute_steps": int(status.get("step") or 0) + extra,
        "step_time_p50_s": step_times[len(step_times) // 2] if step_times else None,
        "eval": {"step": ev["step"], "loss": ev["value"]},
        "final_eval_loss": ev["value"][-1] if ev["value"] else None,
        "best_eval_loss": min((v for v in ev["value"] if math.isfinite(v)), default=None),
        "train": {"step": loss["step"][::every], "loss": loss["value"][::every]},
        "lr_curve": {"step": m.get("lr", {}).get("step", [])[::every], "lr": m.get("lr", {}).get("value", [])[::every]},
        "interventions": [
            {"step": c.get("applied_step"), "kind": c["kind"], "args": c.get("args"), "source": c["source"],
             "status": c["status"], "why": c.get("comment")} for c in commands],
        "person": getattr(steerer, "actions", None),
        "run_dir": str(cfg.run_dir),
    }


def run_pbt_arm(arm: Arm, seed: int, setup: Setup, runs: Path, cfg: Any) -> dict[str, Any]:
    """Ray Tune's PBT with the agents' budget (see studies/pbt_baseline.py)."""
    import shutil

    from pbt_baseline import run_pbt

    storage = runs / "tune"
    shutil.rmtree(storage / f"pbt-s{seed}", ignore_errors=True)
    out = run_pbt(cfg.task.target, cfg.task.kwargs, seed, arm.lr, setup.batch_size, setup.pbt_population,
                  setup.pbt_steps, setup.pbt_interval, storage)
    shutil.rmtree(storage / f"pbt-s{seed}", ignore_errors=True)  # ~80 MB a checkpoint
    return {"arm": arm.name, "seed": seed, "label": arm.label, "lr": arm.lr, "optimizer": arm.optimizer,
            "schedule": arm.schedule, "steerer": arm.steerer, "status": "stopped", "branch": None,
            "step_time_p50_s": None, "interventions": [], "person": None, "run_dir": str(storage), **out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", type=int, choices=[0, 1, 2], required=True, help="0: the lr sweep behind study 1")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=None, help="only these arms (default: all of the study's)")
    p.add_argument("--steps", type=int, default=Setup.steps)
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "case_studies")
    p.add_argument("--out", type=Path, default=None, help="default: docs/case_study_<n>.json")
    p.add_argument("--skip-done", action="store_true", help="keep the arm/seed pairs already in --out")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoints (~250 MB a run)")
    p.add_argument("--reuse", type=Path, nargs="*", default=[],
                   help="results JSON of another study: its runs of an identical static arm are taken, not re-run")
    p.add_argument("--llm-url", default=None, help="an OpenAI-compatible endpoint instead of the local model")
    p.add_argument("--llm-model", default=None)
    p.add_argument("--by-arm", action="store_true", help="every seed of an arm before the next arm")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    arms = [a for a in STUDIES[args.study] if args.arms is None or a.name in args.arms]
    if args.arms and len(arms) != len(args.arms):
        p.error(f"unknown arm in {args.arms}; study {args.study} has {[a.name for a in STUDIES[args.study]]}")
    out = args.out or REPO / "docs" / f"case_study_{args.study}.json"
    setup = Setup(steps=args.steps)
    done: list[dict[str, Any]] = []
    first_machine = None  # the machine of the study's first invocation stays in the header
    if args.skip_done and out.exists():
        done = json.loads(out.read_text())["runs"]
        first_machine = json.loads(out.read_text()).get("machine")
    for other in args.reuse:  # e.g. study 2's "lr 5e-3, no intervention" is study 1's grid point
        for r in json.loads(other.read_text())["runs"] if other.exists() else []:
            arm = next((a for a in arms if a.name == r["arm"]), None)
            same = arm is not None and arm.steerer is None and r["steerer"] is None and r["steps"] == setup.steps and (
                (arm.lr, arm.optimizer, arm.schedule) == (r["lr"], r["optimizer"], r["schedule"]))
            if same and r["seed"] in args.seeds and not any(
                    d["arm"] == r["arm"] and d["seed"] == r["seed"] for d in done):
                done.append({**r, "label": arm.label, "reused_from": str(other)})  # type: ignore[union-attr]
    server = None
    url: str | None = None

    def llm() -> Any:  # one endpoint (the local model loaded once) for every run of the study
        nonlocal server, url
        from ray_interactive.agents.llm import ChatClient, LLMPolicy
        from ray_interactive.agents.llm_server import endpoint

        if url is None:
            url, server = endpoint(args.llm_url)
        return LLMPolicy(ChatClient(url, model=args.llm_model), constrain=server is not None,
                         task="train a small GPT-2 language model on WikiText-2; lower validation loss is better")

    import ray

    from ray_interactive.runtime.connection import init_ray

    info = _machine()  # the load before the study starts
    init_ray(None)
    order = [(seed, arm) for arm in arms for seed in args.seeds] if args.by_arm else [
        (seed, arm) for seed in args.seeds for arm in arms]
    try:
        for seed, arm in order:
            if any(r["arm"] == arm.name and r["seed"] == seed for r in done):
                continue
            log.info("study %d: arm %s, seed %d", args.study, arm.name, seed)
            result = run_arm(arm, seed, setup, args.runs, args.study, llm, args.keep_checkpoints)
            result["machine"] = info  # the load before this invocation, its date and commit
            log.info("  -> final eval loss %s in %.0f s, %d interventions", result["final_eval_loss"],
                     result["wall_s"], len(result["interventions"]))
            done = [r for r in done if not (r["arm"] == arm.name and r["seed"] == seed)] + [result]
            out.parent.mkdir(parents=True, exist_ok=True)
            doc = {"study": args.study, "setup": setup.__dict__, "arms": [a.__dict__ for a in STUDIES[args.study]],
                   "machine": first_machine or info, "runs": done}
            out.write_text(json.dumps(doc, indent=1, default=str))
    finally:
        if server is not None:
            server.close()
        ray.shutdown()
    return 0


def _machine() -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from _common import machine

    return machine()


if __name__ == "__main__":
    sys.exit(main())
