"""A chat model that learns from its users' corrections, on an embedded local Ray.

    python apps/chat_loop.py --duration 600        # or: make demo-chat

starts the run (the trainer finetunes SmolLM2-135M-Instruct's LoRA adapters on what users
teach it, beside a replay of its own general answers, and publishes each new adapter), the
chat (apps/chat_demo.py) with the model following those versions, the control UI, and
(unless ``--users 0``) simulated users who ask about a made-up product and correct wrong
answers through the chat's API. It prints the URLs, a status line every 10 s, and a summary
at the end (``--duration`` seconds, or Ctrl-C).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("chat")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python apps/chat_loop.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=None, help="stop cleanly after this many seconds (default: Ctrl-C)")
    ap.add_argument("--users", type=int, default=2, help="simulated users (0: none, only people)")
    ap.add_argument("--model", default="smollm2", choices=("smollm2", "tiny"),
                    help="smollm2: the real 135M model; tiny: a small random one (a smoke test of the loop)")
    ap.add_argument("--name", default=None, help="run name (default: chat-HHMMSS)")
    ap.add_argument("--run-dir", default=None, help="default: runs/<name>")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--publish-every", type=int, default=10, help="training steps between adapter versions")
    ap.add_argument("--eval-every", type=int, default=50, help="training steps between evaluations (held-out wordings)")
    ap.add_argument("--feedback-weight", type=float, default=1.0, help="mixture weight of users' feedback (replay: 1)")
    ap.add_argument("--distil", type=float, default=None,
                    help="weight of the KL to the base model on replay rows (default: the task's; 0: replay is plain SFT)")
    ap.add_argument("--rollout", action=argparse.BooleanOptionalAction, default=True,
                    help="guard the chat: a judge beside it evaluates each new adapter version first, and the chat "
                         "serves it only if it answers the general questions within one of the base model "
                         "(--no-rollout: the chat follows every version at once)")
    ap.add_argument("--wikitext", default=None, help="WikiText-2 directory: its perplexity is evaluated too")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=None, help="the chat's port (default: 7860 or the next free one)")
    ap.add_argument("--host", default="127.0.0.1", help="bind the chat here (not loopback: needs a login)")
    ap.add_argument("--ui-port", type=int, default=None)
    ap.add_argument("--no-ui", action="store_true", help="no control UI")
    ap.add_argument("--auth-file", default=None, help="one line user:password for the chat and the control UI")
    ap.add_argument("--address", default=None, help="an existing Ray cluster (default: an embedded local one)")
    args = ap.parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        ap.error("--duration must be > 0 seconds")
    if not 0 <= args.users <= 16:
        ap.error("--users must be 0..16")
    if args.eval_every < 1 or args.publish_every < 1 or args.batch_size < 2:
        ap.error("--eval-every and --publish-every must be >= 1, --batch-size >= 2")
    if args.distil is not None and not 0 <= args.distil <= 100:
        ap.error("--distil must be 0..100")
    if args.wikitext is not None and not (Path(args.wikitext) / "wiki.valid.tokens").exists():
        ap.error(f"--wikitext {args.wikitext} has no wiki.valid.tokens")
    import ray_interactive as ri

    try:
        args.auth = ri.read_auth(args.auth_file)
        ri.check_bind(args.host, args.auth, "the chat")
    except (OSError, ValueError) as e:
        ap.error(str(e))
    return args


class ChatLoop:
    """The run, the control UI, the chat and its users: started in order, stopped in reverse."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.handle: Any = None
        self.client: Any = None
        self.link: Any = None
        self.engine: Any = None
        self.users: Any = None
        self.judge: Any = None
        self._closers: list[tuple[str, Any]] = []

    def start(self) -> dict[str, str]:
        import torch

        import ray_interactive as ri
        from apps.chat_demo import launch_demo
        from apps.chat_users import ChatUserPool

        a = self.args
        name = a.name or f"chat-{time.strftime('%H%M%S')}"
        kwargs: dict[str, Any] = {"model": a.model, "seed": a.seed}
        if a.distil is not None:
            kwargs["distil"] = a.distil
        if a.wikitext:
            kwargs["wikitext_dir"] = str(Path(a.wikitext).resolve())
        config = ri.RunConfig.model_validate({
            "name": name, "run_dir": a.run_dir,
            "task": {"target": ri.chat.TASK, "kwargs": kwargs},
            "batch_size": a.batch_size, "lr": a.lr, "seed": a.seed,
            "saved_weights": "trainable",  # the adapter travels and is checkpointed, not the 540 MB base
            "publish_every": a.publish_every, "eval_every": a.eval_every, "checkpoint_every": 100,
            "mixture": {ri.chat.FEEDBACK: a.feedback_weight, ri.chat.REPLAY: 1.0},
            "rollout": ri.chat.ROLLOUT if a.rollout else {"enabled": False},
            "torch_threads": 1,
            "start_paused": True,  # the base is evaluated before the first step
        })
        self.handle = ri.start_run(config, address=a.address)
        self.client = client = self.handle.client()
        client.send("evaluate", source="system", comment="the base model, before any correction")
        client.send("resume", source="system", comment="the base is evaluated: train")
        torch.set_num_threads(1)  # the trainer has the other core
        urls: dict[str, str] = {}
        if not a.no_ui:
            ui, urls["control UI"] = ri.serve_control_ui(client, host=a.host, port=a.ui_port, auth=a.auth, block=False)
            self._closers.append(("control UI", ui.close))
        # The served model: the same base with the adapter the trainer publishes, swapped in
        # between answers; every exchange goes to the run's buffer through the replica's log.
        model = ri.chat.build_chat_model(a.model, seed=a.seed)
        self.link = link = ri.ReplicaLink(name, model, namespace=client.namespace, max_delay_s=0.05)
        self._closers.append(("replica link", link.close))
        if a.rollout:  # on its own copy of the model, so the chat keeps answering meanwhile
            judge_model = ri.chat.build_chat_model(a.model, seed=a.seed)
            self.judge = ri.CanaryJudge(client, judge_model, evaluate=ri.chat.judge_evaluation(a.model)).start()
            self._closers.append(("canary judge", self.judge.stop))
        self.engine = ri.chat.ChatEngine(model, ri.chat.load_tokenizer(), lock=link.lock, version=lambda: link.version,
                                         send=link.log)
        demo, urls["chat"] = launch_demo(self.engine, host=a.host, port=a.port, auth=a.auth)
        self._closers.append(("chat", demo.close))
        if a.users:
            self.users = ChatUserPool(urls["chat"], a.users, seed=a.seed, auth=a.auth).start()
            self._closers.append(("simulated users", self.users.stop))
        return urls

    def evaluations(self) -> dict[str, list[float]]:
        keys = ["eval/kb_accuracy", "eval/general_accuracy", "eval/wikitext_ppl"]
        m = self.client.metrics(keys=keys)
        return {k.removeprefix("eval/"): m.get(k, {}).get("value") or [] for k in keys}

    def line(self) -> str:
        st = self.client.status()
        m = self.client.metrics(keys=["loss"], since=max(0, st["step"] - 20))
        loss = (m.get("loss", {}).get("value") or [float("nan")])[-1]
        ev = self.evaluations()
        acc = ev["kb_accuracy"]
        evals = "" if not acc else (f" | held-out wordings right: {100 * acc[-1]:.0f}% (base {100 * acc[0]:.0f}%), "
                                    f"general kept: {100 * ev['general_accuracy'][-1]:.0f}%")
        info = self.engine.info()
        users = ""
        if self.users is not None:
            u = self.users.stats()
            users = (f" | users: {u['asked']} asked, {u['right']} right, {u['corrected']} corrected, "
                     f"{u['facts_answered_right']}/{len(self.users.users[0].kb.facts)} facts answered right")
        return (f"step {st['step']} loss {loss:.3f} | chat serves version {info['version']}{self.rollout_line()}, "
                f"{info['answered']} answers, {info['logged_rows']} rows logged" + users + evals)

    def rollout_line(self) -> str:
        """The guarded rollout in a few words: what is judged, what was decided."""
        if self.judge is None:
            return ""
        r = self.client.rollout()
        acts = [d["action"] for d in r["decisions"]]
        judged = f"version {r['canary']} being judged, " if r["canary"] is not None else ""
        return f" ({judged}{acts.count('promoted')} promoted, {acts.count('rolled back')} rolled back)"

    def rollout_summary(self) -> str | None:
        """Each version the judge decided on, with its general and held-out answers."""
        if self.judge is None:
            return None
        r = self.client.rollout()
        parts = []
        acts = [d["action"] for d in r["decisions"]]
        for d in r["decisions"][-8:]:
            canary = (d.get("figures") or {}).get("canary") or {}
            figs = ", ".join(f"{k.removesuffix('_accuracy')} {100 * canary[k]:.0f}%"
                             for k in ("general_accuracy", "kb_accuracy") if k in canary)
            parts.append(f"v{d['version']} {d['action']}" + (f" ({figs})" if figs else ""))
        counts = f"{acts.count('promoted')} promoted, {acts.count('rolled back')} rolled back"
        return (f"guarded rollout: the chat serves version {r['stable']}; {counts}"
                + (f"; the last: {'; '.join(parts)}" if parts else ""))

    def stop(self, interrupted: bool = False) -> int:
        code = 0
        rollout = None
        if self.client is not None:
            try:
                rollout = self.rollout_summary()
            except Exception as e:  # noqa: BLE001 - the summary must not stop the shutdown
                log.warning("the rollout's summary: %s", e)
        while self._closers:
            name, fn = self._closers.pop()
            try:
                fn()
            except Exception as e:
                log.warning("stopping %s: %s", name, e)
        if self.handle is None:
            return code
        try:
            self.client.send("evaluate", source="system", comment="the model at the end of the run")
            if interrupted:
                self.client.send("stop", source="cli", comment="Ctrl-C")
            else:
                self.client.send("stop", source="system", comment="the chat loop's --duration is over")
            self.handle.wait(timeout=300)
            import ray_interactive as ri

            ri.print_summary(self.client)
            if rollout:
                print(rollout, flush=True)
            ev = self.evaluations()
            if ev["kb_accuracy"]:
                print(f"held-out wordings answered right: base {100 * ev['kb_accuracy'][0]:.0f}% -> "
                      f"end {100 * ev['kb_accuracy'][-1]:.0f}%; general questions kept: "
                      f"{100 * ev['general_accuracy'][0]:.0f}% -> {100 * ev['general_accuracy'][-1]:.0f}%", flush=True)
        except Exception as e:
            print(f"run failed: {e}", file=sys.stderr)
            code = 1
        finally:
            self.handle.shutdown()
        return code


#: the URLs the loop prints, the chat first: it is what to open
OPEN = {"chat": "use it: ask about the Orbit Q3, correct wrong answers", "control UI": "watch and steer the run"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    loop = ChatLoop(args)
    try:
        urls = loop.start()
    except Exception as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        loop.stop()
        return 2
    import ray_interactive as ri

    print(ri.url_banner(urls, OPEN), flush=True)
    users = f"{args.users} simulated users are chatting" if args.users else "no simulated users: the chat waits for you"
    until = f"for {args.duration:.0f} s" if args.duration else "until Ctrl-C"
    print(f"running {until}; {users}; run {loop.handle.config.name!r} in {loop.handle.config.resolved_run_dir}",
          flush=True)
    interrupted = ri.watch_run(loop.handle, args.duration, loop.line)
    print("stopping: users, chat; then the run (a last evaluation, the final checkpoint) ...", flush=True)
    code = loop.stop(interrupted=interrupted)
    stats = loop.users.stats() if loop.users is not None else None
    if stats is not None:
        print(f"users: {stats['asked']} questions, {stats['corrected']} corrections, {stats['approved']} approvals; "
              f"facts answered right after corrections (corrections it took): {stats['corrections_before_right']}",
              flush=True)
    return code


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python apps/chat_loop.py` finds apps/
    raise SystemExit(main())
