"""The main job: a miniature NeuralOS that keeps learning from its users, on an embedded local Ray.

    python -m neuralos_example.main --duration 300

starts the run (controller, data buffer, trainer finetuning the shipped base model on base +
live transitions and publishing weights), the control UI, the NeuralOS demo, the replayer that
turns logged interactions into true transitions, and (unless ``--users 0``) simulated users
doing the frequent tasks through the demo's API. It prints both URLs, a progress line every
10 s, and a summary at the end (``--duration`` seconds, or Ctrl-C).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path
from typing import Any

from neuralos_example.evaluation import JUDGE_GUARDS
from neuralos_example.model import BASE_CHECKPOINT, DEFAULT_STEPS, SAMPLER_STEPS

log = logging.getLogger("neuralos")
#: Evaluations besides every --eval-every steps, sent as the run passes these steps: the
#: per-task success plot moves in the first minutes (~2 steps/s on 2 cores; one takes ~10 s).
EARLY_EVALS = (100, 200)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m neuralos_example.main", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=None, help="stop cleanly after this many seconds (default: Ctrl-C)")
    ap.add_argument("--users", type=int, default=2, help="simulated users (0: none, only people)")
    ap.add_argument("--name", default=None, help="run name (default: neuralos-HHMMSS)")
    ap.add_argument("--run-dir", default=None, help="default: runs/<name>")
    ap.add_argument("--checkpoint", default=str(BASE_CHECKPOINT), help="the base model (path without suffix)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100,
                    help="steps of linear lr warmup (a fresh AdamW's first steps would jolt the base: see the README)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--publish-every", type=int, default=20, help="training steps between published weight versions")
    ap.add_argument("--live-weight", type=float, default=1.0, help="mixture weight of live transitions (base: 1)")
    ap.add_argument("--sampler-steps", type=int, default=DEFAULT_STEPS, choices=SAMPLER_STEPS, help="DDIM steps per demo frame")
    ap.add_argument("--base-rows", type=int, default=3000)
    ap.add_argument("--eval-every", type=int, default=300, help="training steps between per-task evaluations (~10 s each); also at steps "
                    + ", ".join(map(str, EARLY_EVALS)))
    ap.add_argument("--demo-port", type=int, default=None, help="default: 7860 or the next free port")
    ap.add_argument("--demo-host", default="127.0.0.1", help="bind the demo here (not loopback: needs a login)")
    ap.add_argument("--ui-port", type=int, default=None)
    ap.add_argument("--ui-host", default="127.0.0.1", help="bind the control UI here (not loopback: needs a login)")
    ap.add_argument("--auth-file", default=None,
                    help="one line user:password for the demo and the control UI (or set RI_UI_AUTH)")
    ap.add_argument("--no-ui", action="store_true", help="no control UI")
    ap.add_argument("--replicas", type=int, default=2,
                    help="model replicas on Ray Serve (0: the model in the demo's own process)")
    ap.add_argument("--no-rollout", action="store_true",
                    help="every replica takes each new version at once (default: a canary replica first, judged "
                         "on held-out sessions, promoted or rolled back)")
    ap.add_argument("--address", default=None, help="an existing Ray cluster (default: an embedded local one)")
    args = ap.parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        ap.error("--duration must be > 0 seconds")
    if args.eval_every < 1 or args.warmup < 0:
        ap.error("--eval-every must be >= 1 and --warmup >= 0")
    if not 0 <= args.replicas <= 64:
        ap.error("--replicas must be 0..64")
    if args.users < 0 or args.users > 64:
        ap.error("--users must be 0..64")
    if not Path(args.checkpoint).with_suffix(".safetensors").exists():
        ap.error(f"no base model at {args.checkpoint}.safetensors (make one with python -m neuralos_example.pretrain)")
    import ray_interactive as ri

    try:
        args.auth = ri.read_auth(args.auth_file)
        ri.check_bind(args.demo_host, args.auth, "the NeuralOS demo")
        ri.check_bind(args.ui_host, args.auth, "the control UI")
    except (OSError, ValueError) as e:
        ap.error(str(e))
    return args


class Deployment:
    """The deployed side of the loop for a run: the demo serving the model (weights followed as
    the trainer publishes them), the interaction log into the buffer, the replayer, and the
    simulated users. ``close()`` stops them in reverse order (the run is not touched)."""

    def __init__(self, client: Any, run_dir: Path, checkpoint: str | Path = BASE_CHECKPOINT, sampler_steps: int = DEFAULT_STEPS,
                 users: int = 0, demo_port: int | None = None, replay_poll_s: float = 0.2,
                 demo_host: str = "127.0.0.1", auth: tuple[str, str] | None = None, replicas: int = 0) -> None:
        from apps.neuralos_demo import serve_demo
        from neuralos_example.engine import DemoEngine, InteractionLog
        from neuralos_example.model import load_model
        from neuralos_example.replay import Replayer
        from neuralos_example.users import UserPool

        self.client = client
        self._final: tuple[int, str] | None = None  # (rows logged, versions) once closed
        self._closers: list[tuple[str, Any]] = []
        self.log_sink: InteractionLog | None = None
        self.served: Any = None
        self.judge: Any = None
        try:
            model = load_model(checkpoint)
            if replicas:
                # The model on Ray Serve: each replica follows the weights and logs its users'
                # interactions; this process keeps the sessions and the base model to compare.
                import ray_interactive as ri
                from neuralos_example.serving import NeuralOSModel, ServedFrames

                self.app_name = f"{client.run}-model"
                handle = ri.deploy(NeuralOSModel.options(num_replicas=replicas).bind(
                    run=client.run, checkpoint=str(checkpoint), sampler_steps=sampler_steps, namespace=client.namespace),
                    self.app_name)
                self._closers.append(("model replicas", lambda: ri.undeploy(self.app_name)))
                self.served = ServedFrames(handle, client)
                if client.rollout()["enabled"]:
                    # the canary judge: each new version on held-out sessions against the stable one
                    from neuralos_example.evaluation import JudgeEvaluation

                    self.judge = ri.CanaryJudge(client, load_model(checkpoint), JudgeEvaluation(steps=sampler_steps))
                    self.judge.start()
                    self._closers.append(("canary judge", self.judge.stop))
                self.engine = DemoEngine(model, None, sampler_steps, base_model=copy.deepcopy(model), remote=self.served)
            else:
                self.log_sink = InteractionLog(lambda table, bid: client.ingest(table, "interactions", batch_id=bid))
                self._closers.append(("interaction log", self.log_sink.close))
                # a second copy that is never updated: what "compare with the base model" shows
                self.engine = DemoEngine(model, self.log_sink.add, sampler_steps, base_model=copy.deepcopy(model))
                self._closers.append(("frame worker", self.engine.close))
                self.subscriber = sub = client.subscribe(model)
                # Inference and swaps exclude each other, and the version a frame is logged with is
                # read under the same lock: it is the version that drew it.
                self.engine.model_lock = sub.lock
                self.engine.version_source = lambda: sub.loaded.version if sub.loaded is not None else 0
                sub.start()
                self._closers.append(("weight subscriber", sub.stop))
            self.replayer = Replayer(client, Path(run_dir) / "replayer.json", size=self.engine.size, poll_s=replay_poll_s).start()
            self._closers.append(("replayer", self._stop_replayer))
            self.demo, self.url = serve_demo(self.engine, host=demo_host, port=demo_port, auth=auth)
            self._closers.append(("demo", self.demo.close))
            self.users = UserPool(self.url, users, auth=auth).start() if users else None
            if self.users is not None:
                self._closers.append(("simulated users", self.users.stop))
        except BaseException:
            self.close()
            raise

    def _stop_replayer(self) -> None:
        self.replayer.stop()
        if self.log_sink is not None:  # (replicas sent theirs when they stopped)
            self.log_sink.close()  # the users and the demo are stopped: send their last rows ...
        try:
            self.replayer.poll()  # ... and replay them
        except Exception as e:
            log.warning("final replay failed: %s", e)

    def logged_rows(self) -> int:
        """Interactions stored in the run's buffer (what the demo and its replicas logged)."""
        if self._final is not None:
            return self._final[0]
        return int(self.client.sources()["interactions"]["rows"])

    def versions(self) -> str:
        """The weights version the model is served at; per replica when on Serve."""
        if self._final is not None:
            return self._final[1]
        if self.served is None or len(self.served.replicas) < 2:
            return f"model version {self.engine.version}"
        text = "model versions " + ", ".join(f"{r[:6]} v{v}" for r, v in sorted(self.served.replicas.items()))
        if self.judge is not None:
            ro = self.client.rollout()
            rejected = f", {len(ro['rejected'])} rolled back" if ro["rejected"] else ""
            text += f" (stable v{ro['stable']}" + (f", canary v{ro['canary']}" if ro["canary"] else "") + rejected + ")"
        return text

    def close(self) -> None:
        try:
            versions = self.versions()  # what was served, before the replicas stop
        except Exception:
            versions = "model version unknown"
        while self._closers:
            name, fn = self._closers.pop()
            try:
                fn()
            except Exception as e:
                log.warning("stopping %s: %s", name, e)
        try:  # everything is flushed now; the run (and its buffer) may stop next
            self._final = (self.logged_rows(), versions)
        except Exception as e:
            log.warning("figures at the end: %s", e)


class Loop:
    """The run, the control UI and the deployment, started in order and stopped in reverse."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.handle: Any = None
        self.deployment: Deployment | None = None
        self.ui: Any = None
        self._early = [s for s in EARLY_EVALS if s % args.eval_every]  # a multiple is evaluated anyway

    def start(self) -> dict[str, str]:
        import torch

        import ray_interactive as ri

        a = self.args
        name = a.name or f"neuralos-{time.strftime('%H%M%S')}"
        config = ri.RunConfig.model_validate({
            "name": name,
            "run_dir": a.run_dir,
            "task": {"target": "neuralos_example.task:NeuralOSTask",
                     "kwargs": {"checkpoint": str(Path(a.checkpoint).resolve()), "base_rows": a.base_rows, "live_weight": a.live_weight,
                                "sampler_steps": a.sampler_steps}},
            "batch_size": a.batch_size,
            "lr": a.lr,
            "schedule": {"kind": "constant", "warmup_steps": a.warmup},
            "publish_every": a.publish_every,
            "checkpoint_every": 500,
            "eval_every": a.eval_every,
            "torch_threads": 1,
            "rollout": {"enabled": bool(a.replicas) and not a.no_rollout, "guards": JUDGE_GUARDS},
        })
        self.handle = ri.start_run(config, address=a.address)
        self.client = client = self.handle.client()
        # the per-task metrics of the base model, before any finetuning: the plots' first point
        client.send("evaluate", source="system", comment="the base model, before finetuning")
        torch.set_num_threads(1)  # the trainer has the other core
        urls: dict[str, str] = {}
        if not a.no_ui:
            self.ui, urls["control UI"] = ri.serve_control_ui(client, host=a.ui_host, port=a.ui_port, auth=a.auth, block=False)
        self.deployment = Deployment(client, config.resolved_run_dir, a.checkpoint, a.sampler_steps, a.users, a.demo_port,
                                     demo_host=a.demo_host, auth=a.auth, replicas=a.replicas)
        urls["NeuralOS demo"] = self.deployment.url
        return urls

    def evaluate_early(self) -> None:
        """Ask for the early evaluations (:data:`EARLY_EVALS`) the run has reached."""
        step = self.client.status()["step"]
        while self._early and step >= self._early[0]:
            at = self._early.pop(0)
            self.client.send("evaluate", source="system", comment=f"an early evaluation (step {at}): the plots move sooner")

    def line(self) -> str:
        d = self.deployment
        assert d is not None
        st = self.client.status()
        m = self.client.metrics(keys=["loss", "mix/live"], since=max(0, st["step"] - 20))
        m |= self.client.metrics(keys=["eval/frequent/success", "eval/rare/success"])  # few points: all of them
        loss = m.get("loss", {}).get("value") or [float("nan")]
        live = m.get("mix/live", {}).get("value") or [0.0]
        ev = {k: (m.get(f"eval/{k}/success", {}).get("value") or [None]) for k in ("frequent", "rare")}
        tasks = "" if ev["frequent"][-1] is None else (
            f" | task success (last eval): frequent {100 * ev['frequent'][-1]:.0f}% (first {100 * ev['frequent'][0]:.0f}%), "
            f"rare {100 * ev['rare'][-1]:.0f}% (first {100 * ev['rare'][0]:.0f}%)")
        rep = d.replayer.stats()
        actions = d.users.stats()["actions"] if d.users else 0
        lat = rep["latency_p50_s"]
        return (f"step {st['step']} loss {loss[-1]:.4f} live share {live[-1]:.2f} | demo: {d.versions()}, "
                f"{actions} simulated actions, {d.logged_rows()} interactions logged | "
                f"{rep['transitions']} transitions replayed" + (f" (p50 {lat:.2f} s after the action)" if lat is not None else "") + tasks)

    def stop(self, interrupted: bool = False) -> int:
        code = 0
        try:
            if self.deployment is not None:
                self.deployment.close()
            if self.handle is not None:
                try:
                    # the per-task metrics at the end, for the summary (applied before the stop)
                    self.client.send("evaluate", source="system", comment="the model at the end of the run")
                    if interrupted:  # a person pressed Ctrl-C
                        self.client.send("stop", source="cli", comment="Ctrl-C")
                    else:  # the run's own time limit: nobody sent it
                        self.client.send("stop", source="system", comment="the main job's --duration is over")
                    self.handle.wait(timeout=180)
                    import ray_interactive as ri

                    ri.print_summary(self.client)
                except Exception as e:
                    print(f"run failed: {e}", file=sys.stderr)
                    code = 1
        finally:
            if self.handle is not None:
                self.handle.shutdown()
            if self.ui is not None:
                self.ui.close()
        return code


#: the URLs the demo prints, the demo first: it is what to open
OPEN = {"NeuralOS demo": "use it: click on the screen, type", "control UI": "watch and steer the training run"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    loop = Loop(args)
    try:
        urls = loop.start()
    except Exception as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        loop.stop()
        return 2
    import ray_interactive as ri

    print(ri.url_banner(urls, OPEN), flush=True)
    users = f"{args.users} simulated users are using the demo" if args.users else "no simulated users: the demo waits for you"
    until = f"for {args.duration:.0f} s" if args.duration else "until Ctrl-C"
    print(f"running {until}; {users}; run {loop.handle.config.name!r} in {loop.handle.config.resolved_run_dir}", flush=True)
    interrupted = ri.watch_run(loop.handle, args.duration, loop.line, on_tick=loop.evaluate_early)
    print("stopping: users, demo, replayer; then the run (a last evaluation, the final checkpoint) ...", flush=True)
    code = loop.stop(interrupted=interrupted)
    d = loop.deployment
    assert d is not None
    rep = d.replayer.stats()
    print(f"demo: served {d.versions()}; {d.logged_rows()} interactions logged; "
          f"{rep['transitions']} transitions replayed and ingested ({rep['skipped']} skipped)", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
