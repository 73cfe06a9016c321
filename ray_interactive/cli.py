"""``ray-interactive``: start, watch and steer runs from a shell.

    ray-interactive demo --data ../shared/data/wikitext-2 --duration 90
    ray-interactive run --example regression --name r1 --max-steps 2000
    ray-interactive status r1
    ray-interactive send r1 update_optimizer lr=3e-4
    ray-interactive send r1 set_data_mixture base=0.7 live=0.3
    ray-interactive log r1
    ray-interactive weights r1
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ray_interactive.stopping import StopSignals
from ray_interactive.summary import print_summary, prog

EXAMPLES = {
    "tiny-lm": "ray_interactive.examples.tiny_lm:TinyLMTask",
    "regression": "ray_interactive.examples.regression:RegressionTask",
}


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def parse_value(text: str) -> Any:
    """``1e-4`` -> 0.0001, ``[0.9,0.95]`` -> list, ``true`` -> True, else the string."""
    from ray_interactive.core.commands.text import parse_value as parse

    return parse(text)


def parse_assignments(items: list[str], text_keys: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b": {"c": "x"}}`` (see :mod:`ray_interactive.core.commands.text`)."""
    from ray_interactive.core.commands.text import parse_assignments as parse

    try:
        return parse(items, text_keys)
    except ValueError as e:
        raise CLIError(str(e)) from None


def text_fields(kind: str) -> frozenset[str]:
    """Fields of a command kind whose value is text: a CLI value for one is never read as JSON."""
    from ray_interactive.core.commands.text import text_fields as fields

    return fields(kind)


def command_payload(kind: str, assignments: dict[str, Any]) -> dict[str, Any]:
    """Build a command, with shorthands: ``update_optimizer lr=1e-4`` puts ``lr`` into
    ``params``, ``set_data_mixture base=0.7`` puts ``base`` into ``weights`` (a kind's ``spread``)."""
    from ray_interactive.core.commands.text import command_payload as build

    return build(kind, assignments)


# -- run / demo --------------------------------------------------------------------------
def build_config(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from ray_interactive.core.config import RunConfig
    from ray_interactive.core.plain import describe_validation_error

    doc: dict[str, Any] = {}
    if args.resume:  # the run's own config; flags and --set still override (e.g. --max-steps)
        run_dir = Path(args.resume)
        if not (run_dir / "config.json").exists():
            raise CLIError(f"{run_dir} is not a run directory (no config.json)")
        doc = _read_json(run_dir / "config.json")
        doc["run_dir"] = str(run_dir.resolve())  # where it is now, if it was moved or copied
        if not isinstance(doc.get("task"), dict):  # not a run of our trainer: its loop is the user's
            from ray_interactive.core.config import RunConfig
            from ray_interactive.core.resume import how_to_resume

            try:
                hint = how_to_resume(RunConfig.model_validate(doc))
            except ValueError:
                hint = "run the script that trained it again with resume=True"
            raise CLIError(f"`run --resume` continues runs of our trainer; run {doc.get('name')!r} in {run_dir} "
                           f"has no task: {hint}")
        if args.name and args.name != doc["name"]:
            raise CLIError(f"--resume continues run {doc['name']!r}; it cannot be renamed (use --replay for a new run)")
    elif args.config:
        doc = _read_json(Path(args.config))
    if args.example:
        doc["task"] = {"target": EXAMPLES[args.example], "kwargs": {}}
    if args.task:
        doc["task"] = {"target": args.task, "kwargs": {}}
    if "task" not in doc:
        raise CLIError("say what to train: --example NAME, --task package.module:Class or --config FILE")
    doc["task"].setdefault("kwargs", {}).update(parse_assignments(args.task_arg or []))
    _merge(doc, parse_assignments(args.set or []))
    for key in ("name", "max_steps", "run_dir", "lr", "batch_size", "checkpoint_every", "eval_every", "publish_every",
                "workers", "buffer_shards"):
        value = getattr(args, key, None)
        if value is not None:
            doc[key] = value
    if getattr(args, "http_ingest", None):
        doc["http_ingest"] = {**(doc.get("http_ingest") or {}), **parse_host_port(args.http_ingest)}
    doc.setdefault("name", f"run-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        return RunConfig.model_validate(doc)
    except ValidationError as e:  # pydantic's text: "1 validation error for RunConfig ... errors.pydantic.dev"
        raise CLIError(f"invalid run configuration: {describe_validation_error(e)}") from None
    except ValueError as e:
        raise CLIError(f"invalid run configuration: {e}") from None


def parse_host_port(text: str) -> dict[str, Any]:
    """``8123`` -> ``{"port": 8123}``; ``0.0.0.0:8123`` and ``[::1]:8123`` give the host too."""
    host, sep, port = text.rpartition(":")
    if not (port.isascii() and port.isdigit()) or int(port) > 65535 or (sep and not host):
        raise CLIError(f"expected [HOST:]PORT with a port from 0 to 65535, got {text!r}")
    out: dict[str, Any] = {"port": int(port)}
    if host:
        out["host"] = host.removeprefix("[").removesuffix("]")
    return out


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or a CLIError saying what is wrong with it."""
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise CLIError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise CLIError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CLIError(f"{path} must hold a JSON object (a RunConfig), not {type(doc).__name__}")
    return doc


def _merge(doc: dict[str, Any], updates: dict[str, Any]) -> None:
    """Nested update: ``schedule.kind=cosine`` keeps the schedule's other fields."""
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            _merge(doc[key], value)
        else:
            doc[key] = value


def cmd_run(args: argparse.Namespace) -> int:
    from ray_interactive.runtime.launch import replay_run, start_run

    try:
        if getattr(args, "replay", None):
            if not args.name:
                raise CLIError("--replay needs a --name for the new run")
            handle = replay_run(Path(args.replay), args.name, Path(args.run_dir) if args.run_dir else None, args.address)
            config = handle.config
        else:
            config = build_config(args)
            handle = start_run(
                config, resume=bool(args.resume), resume_from=args.from_checkpoint, detached=args.detach, address=args.address
            )
    except (ValueError, ConnectionError) as e:
        raise CLIError(str(e)) from None
    client = handle.client()
    me = prog()
    print(f"run {config.name!r} started; run dir: {handle.config.resolved_run_dir}")
    print(f"  attach from another shell:  {me} status {config.name}")
    print(f"  steer it:                   {me} send {config.name} update_optimizer lr=3e-4")
    if handle.ingest_url:
        print(f"  HTTP ingest:                {handle.ingest_url} (bearer token in "
              f"{handle.config.resolved_run_dir / 'ingest_token'})")
    if args.detach:
        print(f"detached: the run goes on after this process exits; stop it with `{me} send {config.name} stop`")
        return 0
    if getattr(args, "ui", False):
        _, url = start_ui(client, args)
        print(f"  control UI:                 {url}")
    tour = Tour(client) if getattr(args, "tour", False) else None
    return watch(handle, client, args.duration, tour, quiet=args.quiet)


def _ui_auth(args: argparse.Namespace) -> tuple[str, str] | None:
    from ray_interactive.ui.access import read_auth

    try:
        return read_auth(getattr(args, "auth_file", None))
    except (OSError, ValueError) as e:
        raise CLIError(f"UI authentication: {e}") from None


def start_ui(client: Any, args: argparse.Namespace) -> tuple[Any, str]:
    """Serve the control UI from this process (threads): (the app, its URL)."""
    from ray_interactive.ui.control_ui import serve_control_ui

    try:
        return serve_control_ui(client, host=args.ui_host, port=args.ui_port, auth=_ui_auth(args), block=False)
    except ValueError as e:
        raise CLIError(str(e)) from None


def cmd_ui(args: argparse.Namespace) -> int:
    client = _connect(args, finished_ok=True)
    with StopSignals() as stop:  # after connecting: ray.init sets its own SIGTERM handler (sys.exit anywhere)
        ui, url = start_ui(client, args)
        what = "a finished run, read-only" if getattr(client, "read_only", False) else "the run goes on"
        print(f"control UI of run {args.run!r}: {url}  (Ctrl-C to quit; {what})", flush=True)
        while not stop.wait(0.5):
            pass
        ui.close()
    print(f"control UI closed ({stop.name}; {what})", file=sys.stderr, flush=True)
    return stop.exit_code


def _ui_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--ui-host", default="127.0.0.1", help="bind the UI here (not 127.0.0.1: needs --auth-file)")
    sp.add_argument("--ui-port", type=_port, default=None, help="default: 7860 or the next free port")
    sp.add_argument("--auth-file", default=None, help="a file holding one line user:password (or set RI_UI_AUTH)")


def watch(handle: Any, client: Any, duration: float | None, tour: Tour | None, quiet: bool = False) -> int:
    """Show progress until the run ends; stop it after ``duration`` s or on Ctrl-C / SIGTERM."""
    with StopSignals() as stop:  # Ctrl-C or SIGTERM: stop the run in order (a second one: exit now)
        return _watch(handle, client, duration, tour, quiet, stop)


def _watch(handle: Any, client: Any, duration: float | None, tour: Tour | None, quiet: bool, stop: StopSignals) -> int:
    from tqdm import tqdm

    start = time.monotonic()
    seen: set[str] = set()
    # A live bar on a terminal; a plain line every 10 s in logs (CI, pipes).
    tty = sys.stdout.isatty()
    bar = tqdm(total=handle.config.max_steps, unit="step", disable=quiet or not tty, dynamic_ncols=True)
    last_line = 0.0
    stop_sent = False
    exit_code = 0
    while True:
        try:
            final = handle.wait(timeout=1.0)
        except Exception as e:  # the trainer failed: show why
            bar.close()
            print(f"run failed: {e}", file=sys.stderr)
            exit_code = 1
            break
        status = client.status()
        last = client.metrics(keys=["loss", "lr", "eval/loss"], since=max(0, status["step"] - 50))
        bar.n = status["step"]
        post = {"status": status["status"], "branch": status["branch"]}
        for key in ("loss", "lr", "eval/loss"):
            if last.get(key, {}).get("value"):
                post[key] = f"{last[key]['value'][-1]:.4g}"
        bar.set_postfix(post, refresh=False)
        bar.refresh()
        if not tty and not quiet and time.monotonic() - last_line >= 10.0:
            last_line = time.monotonic()
            print(f"step {status['step']} " + " ".join(f"{k}={v}" for k, v in post.items()), flush=True)
        for row in client.commands(limit=20):
            key = f"{row['id']}:{row['status']}"
            if key not in seen and row["status"] != "accepted":
                seen.add(key)
                at = f" at step {row['applied_step']}" if row["applied_step"] is not None else ""
                bar.write(f"[{row['source']}] {row['kind']} {json.dumps(row['args'])} -> {row['status']}{at}: {row['message']}")
        if final is not None:
            break
        elapsed = time.monotonic() - start
        if tour is not None:
            tour.maybe_act(elapsed, duration, bar.write)
        if not stop_sent and (stop.event.is_set() or (duration is not None and elapsed >= duration)):
            bar.write("stopping: finishing the step and writing a final checkpoint ...")
            if stop.event.is_set():  # a person pressed Ctrl-C (or something sent SIGTERM)
                client.send("stop", source="cli", comment="Ctrl-C" if stop.name == "SIGINT" else str(stop.name))
            else:  # nobody sent this one: the run's own time limit
                client.send("stop", source="system", comment=f"--duration {duration:g} s reached")
            stop_sent = True
    bar.close()
    print_summary(client)
    handle.shutdown()
    return exit_code


class Tour:
    """The demo's scripted steering: what a person would do, as commands from the CLI."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.done: set[str] = set()

    def _once(self, name: str, write: Any, kind: str, **fields: Any) -> None:
        if name in self.done:
            return
        self.done.add(name)
        rec = self.client.send(kind, source="cli", comment=f"demo tour: {name}", **fields)
        write(f"tour: {name}: {kind} -> {rec.status.value}{': ' + rec.message if rec.message else ''}")

    def maybe_act(self, elapsed: float, duration: float | None, write: Any) -> None:
        span = duration or 120.0
        if elapsed > 0.25 * span:
            self._once("save a checkpoint", write, "save_checkpoint", tag="tour")
        if elapsed > 0.35 * span:
            lr = self.client.snapshot()["groups"][0]["hparams"]["lr"]
            self._once("halve the learning rate", write, "update_optimizer", params={"lr": lr / 2})
        if elapsed > 0.45 * span:
            self._once("evaluate now", write, "evaluate")
        if elapsed > 0.55 * span:
            self._once("an invalid lr is refused", write, "update_optimizer", params={"lr": -1})
        if elapsed > 0.65 * span:
            ckpts = [c["id"] for c in self.client.checkpoints() if c.get("tag") == "tour"]
            if ckpts:
                self._once("branch from the checkpoint", write, "load_checkpoint", checkpoint_id=ckpts[0], branch="tour-branch")


def cmd_demo(args: argparse.Namespace) -> int:
    data = Path(args.data) if args.data else None
    if data is not None and not (data / "wiki.train.tokens").exists():
        print(f"note: {data} has no WikiText-2; using a generated corpus instead", file=sys.stderr)
        data = None
    args.example, args.task, args.config, args.resume, args.from_checkpoint = "tiny-lm", None, None, None, None
    args.task_arg = ([f"data_dir={json.dumps(str(data.resolve()))}"] if data else []) + (args.task_arg or [])
    args.set = args.set or []
    args.eval_every = args.eval_every or 100
    args.lr = args.lr or 2e-3
    args.name = args.name or f"demo-{time.strftime('%H%M%S')}"
    args.tour = not args.no_tour
    args.ui = not args.no_ui
    args.detach = False
    return cmd_run(args)


# -- attach to a run ---------------------------------------------------------------------
def _connect(args: argparse.Namespace, finished_ok: bool = False, api_ok: bool = False) -> Any:
    """The running run named ``args.run``; with ``finished_ok``, else its run directory
    (``<runs root>/<name>`` or a path) opened read-only, as a finished run.

    With ``api_ok`` (a command the control API answers: status, send, cancel, log,
    checkpoints), a run whose directory is on this machine is asked over HTTP: a fraction
    of a second, no Ray. Otherwise, or for a run elsewhere (a cluster's head), through Ray."""
    from ray_interactive.core.paths import find_run_dir

    run_dir = find_run_dir(args.run)
    if run_dir is not None and api_ok and args.address is None:
        client = _local_client(run_dir, finished_ok)
        if client is not None:
            return client
    from ray_interactive.core.plain import clip
    from ray_interactive.runtime.client import RunNotFound, connect

    try:
        return connect(args.run, address=args.address, namespace=args.namespace, quiet=True)
    except (RunNotFound, ConnectionError) as e:
        if run_dir is None:
            name = clip(args.run, 80)
            raise CLIError(f"{e} (and no run directory {name!r} or {_runs_root() / name} to read)") from None
        return _finished(run_dir, finished_ok, str(e))


def _local_client(run_dir: Path, finished_ok: bool) -> Any:
    """The run in ``run_dir`` over its control API, or the directory as a finished run if
    the run has ended; None when only Ray can tell (a controller being restarted, a run
    without the API)."""
    from ray_interactive.serve.control_client import ApiClient, ApiUnavailable

    api = ApiClient.from_run_dir(run_dir)
    if api is not None:
        try:
            api.status()
            return api
        except ApiUnavailable:
            pass
    try:
        saved = json.loads((run_dir / "status.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        saved = None
    if saved in ("stopped", "failed"):
        return _finished(run_dir, finished_ok, f"run {run_dir.name!r} has {saved}")
    return None


def _finished(run_dir: Path, finished_ok: bool, why: str) -> Any:
    from ray_interactive.runtime.offline import FinishedRun

    if not finished_ok:
        raise CLIError(f"{why}; {run_dir} holds it, finished: resume it with `{prog()} run --resume {run_dir}`")
    return FinishedRun(run_dir)


def _runs_root() -> Path:
    from ray_interactive.core.paths import runs_root

    return runs_root()


def cmd_status(args: argparse.Namespace) -> int:
    client = _connect(args, finished_ok=True, api_ok=True)
    status = client.status()
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    m = client.metrics(keys=["loss", "lr", "grad_norm"], since=max(0, status["step"] - 20))
    print(f"{status['run']}: {status['status']} | step {status['step']} | branch {status['branch']} | "
          f"{status['samples_per_s']:.1f} samples/s | last checkpoint {status['last_checkpoint']}")
    if status.get("message"):
        print(f"  {status['message']}")
    for key, s in m.items():
        if s["value"]:
            print(f"  {key} = {s['value'][-1]:.6g} (step {s['step'][-1]})")
    print(f"  commands: {status['commands']}")
    if getattr(client, "read_only", False):
        print(f"  finished: read from {client.run_dir}")
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    from ray_interactive.core.commands import COMMAND_KINDS

    if args.kind not in COMMAND_KINDS:
        raise CLIError(f"unknown command kind {args.kind!r}; kinds: {', '.join(COMMAND_KINDS)}")
    payload = command_payload(args.kind, parse_assignments(args.fields, text_fields(args.kind)))
    if args.comment:
        payload["comment"] = args.comment
    client = _connect(args, api_ok=True)
    rec = client.submit(payload, source="cli")
    print(f"{rec.kind}: {rec.status.value}" + (f" (#{rec.seq})" if rec.seq else "") + (f": {rec.message}" if rec.message else ""))
    if rec.status.value == "rejected":
        return 1
    if args.wait:
        rec = client.wait(rec, timeout=args.timeout)
        print(f"{rec.kind}: {rec.status.value} at step {rec.applied_step}: {rec.message}")
        return 0 if rec.status.value == "applied" else 1
    return 0


def cmd_kinds(args: argparse.Namespace) -> int:
    """Every command kind, with its arguments: what ``send`` takes."""
    from ray_interactive.core.commands import COMMAND_KINDS, kind_info

    infos = [kind_info(k) for k in COMMAND_KINDS]
    if args.json:
        print(json.dumps([{"kind": i.kind, "summary": i.summary, "example": i.usage(), "for_agents": i.for_agents,
                           "args": [a.__dict__ for a in i.args]} for i in infos], indent=1, default=str))
        return 0
    for info in infos:
        print(f"{info.kind}: {info.summary}")
        for a in info.args:
            extra = ", ".join(x for x in (a.bounds, "required" if a.required else f"default {a.default!r}") if x)
            print(f"    {a.name} ({a.type}; {extra}){': ' + a.description if a.description else ''}")
        print(f"    e.g. {prog()} send RUN {info.usage()}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    """Withdraw a pending command, named ``#12`` / ``12`` (its number) or by its id."""
    target = args.target.removeprefix("#")
    by_seq = target.isascii() and target.isdigit()  # "²".isdigit(), but int("²") raises
    payload: dict[str, Any] = {"kind": "cancel", **({"seq": int(target)} if by_seq else {"command_id": target})}
    client = _connect(args, api_ok=True)
    rec = client.submit(payload, source="cli")
    print(f"cancel: {rec.status.value}" + (f": {rec.message}" if rec.message else ""))
    if rec.status.value == "rejected":
        return 1
    rec = client.wait(rec, timeout=args.timeout)
    print(f"cancel: {rec.status.value} at step {rec.applied_step}: {rec.message}")
    return 0 if rec.status.value == "applied" else 1


def cmd_log(args: argparse.Namespace) -> int:
    client = _connect(args, finished_ok=True, api_ok=True)
    for row in client.commands(limit=args.n):
        if args.json:
            print(json.dumps(row))
            continue
        when = time.strftime("%H:%M:%S", time.localtime(row["received_at"]))
        at = f"@{row['applied_step']}" if row["applied_step"] is not None else ""
        seq = f"#{row['seq']}" if row["seq"] else "-"
        print(f"{when} {seq:>5} {row['source'] or '?':6} {row['kind'] or '?':22} {row['status']:8}{at:8} "
              f"{json.dumps(row['args'])[:60]}  {row['message'] or ''}")
    return 0


def cmd_checkpoints(args: argparse.Namespace) -> int:
    client = _connect(args, finished_ok=True, api_ok=True)
    for c in client.checkpoints():
        print(f"{c['id']:30} step {c['step']:>8}  branch {c['branch']:16} {c['reason']:9} {c.get('tag') or ''}")
    return 0


def _mixture_policy(args: argparse.Namespace) -> Any:
    from ray_interactive.agents.mixture import MixturePolicy
    from ray_interactive.agents.settings import pairs

    try:
        track = pairs(args.track or [], "--track takes SOURCE=METRIC (e.g. live=eval/live/loss)")
        return MixturePolicy(track, higher_is_better=args.higher_is_better)
    except ValueError as e:
        raise CLIError(str(e) if str(e).startswith("--track") else f"mixture agent: {e}") from None


def _rule_policy(args: argparse.Namespace) -> Any:
    from ray_interactive.agents.runtime import RulePolicy
    from ray_interactive.agents.settings import numbers

    try:
        ceiling = numbers(args.update_ceiling or [], "--update-ceiling takes MODULE=RATIO (e.g. transformer.h.0=0.008)")
    except ValueError as e:
        raise CLIError(str(e)) from None
    if ceiling and args.policy != "rule":
        raise CLIError("--update-ceiling is the rule agent's: it needs --policy rule")
    try:
        return RulePolicy(update_ceiling=ceiling)
    except ValueError as e:
        raise CLIError(f"rule agent: {e}") from None


def cmd_agent(args: argparse.Namespace) -> int:
    """Run an agent on a run in the foreground until Ctrl-C / SIGTERM or the run ends."""
    from ray_interactive.agents.guardrails import Guardrails
    from ray_interactive.agents.lookahead import LookaheadAgent, lr_moves
    from ray_interactive.agents.runtime import AgentRunner

    if args.every < 1:
        raise CLIError("--every must be >= 1")
    if args.horizon < 1:
        raise CLIError("--horizon must be >= 1 step")
    if not 0.0 <= args.margin < 1.0:
        raise CLIError(f"--margin is a fraction in [0, 1), not {args.margin}")
    if any(not (f > 0 and math.isfinite(f)) for f in args.factors):
        raise CLIError(f"--factors must be positive numbers, not {args.factors}")
    if args.check and args.policy != "llm":
        raise CLIError("--check tests an LLM's moves: it needs --policy llm")
    try:
        rails = Guardrails(min_interval_s=args.min_interval, max_lr_drift=args.max_lr_drift,
                           drift_window_steps=args.drift_window)
    except ValueError as e:
        raise CLIError(f"guardrails: {e}") from None
    mixture = _mixture_policy(args) if args.policy == "mixture" else None  # its errors before connecting
    rule = _rule_policy(args)
    client = _connect(args)

    def show(entry: dict[str, Any]) -> None:
        acted = ", ".join(f"{s['command']['kind']} -> {s['status']}" for s in entry["sent"]) or "no action"
        refused = "".join(f"; refused {r['command'].get('kind')}: {r['why']}" for r in entry["refused"])
        cut = "".join(f"; {k}: {entry[k]}" for k in ("skipped", "partial") if entry.get(k))
        print(f"step {entry['step']}: {acted} ({entry.get('rationale') or entry.get('error')}){refused}{cut}", flush=True)

    def show_lookahead(entry: dict[str, Any]) -> None:
        tried = ", ".join(f"{t['move']} {t['score']:.4g}" if t["error"] is None else f"{t['move']} failed"
                          for t in entry["trials"])
        print(f"step {entry.get('step')}: lookahead ({entry['reason']}): {tried or 'nothing tried'} -> "
              f"{entry.get('chosen') or entry.get('error')}", flush=True)

    made: dict[str, Any] = {}  # what the agent's thread built (runner, LLM server) or the error it met

    def work() -> None:
        try:
            if args.policy == "lookahead":
                look = made["runner"] = LookaheadAgent(client, horizon=args.horizon, margin=args.margin,
                                                       on_explore=show_lookahead,
                                                       moves=lambda lr: lr_moves(lr, tuple(args.factors)))
                tries = " / ".join(f"x{f:g}" for f in args.factors)
                print(f"agent 'lookahead' on run {args.run!r}: tries lr {tries} for {args.horizon} steps "
                      f"on branches every {args.every} steps and when a detector fires; journal: {look.journal.path}",
                      flush=True)
                if not stop.event.is_set():
                    look.run(every=args.every, at_start=args.at_start)
                return
            policy: Any = rule
            if mixture is not None:
                policy = mixture
                args.at_eval = True  # it compares evaluations: one decision per evaluation
            look = None
            if args.policy == "llm":
                policy, made["server"] = _llm_policy(args)
                if args.check:  # its moves are tried on branches against keeping the run as it is
                    policy.check = True
                    look = LookaheadAgent(client, horizon=args.horizon, margin=args.margin, name="llm-check",
                                          on_explore=show_lookahead)
            runner = made["runner"] = AgentRunner(client, policy, rails, every=args.every, on_tick=show,
                                                  at_eval=args.at_eval, lookahead=look)
            cadence = "at each evaluation" if args.at_eval else f"every {args.every} steps"
            print(f"agent {runner.name!r} on run {args.run!r}, {cadence}; journal: {runner.journal.path}", flush=True)
            if not stop.event.is_set():
                runner.run()
        except BaseException as e:  # noqa: BLE001 - shown by the main thread
            made["error"] = e
        finally:
            stop.event.set()

    # The agent works in a thread; this one waits on the stop flag, so a signal is answered
    # at once even while a tick is in a Ray call or a model's forward pass.
    with StopSignals() as stop:  # after connecting: ray.init sets its own SIGTERM handler
        thread = threading.Thread(target=work, name="agent", daemon=True)
        thread.start()
        while not stop.wait(0.5):
            pass
        runner = made.get("runner")
        if runner is not None:
            runner.stop()  # a tick in flight sends nothing more once stopped
        if getattr(runner, "exploring", False):  # never leave the run paused on a candidate's branch
            print("finishing the candidate under way, then going on from the best so far "
                  "(Ctrl-C again to leave at once)", file=sys.stderr, flush=True)
            thread.join(timeout=(getattr(runner, "lookahead", None) or runner).timeout_s)
        thread.join(timeout=0.5)  # a Ray call or journal line in flight ends; a model's answer is not awaited
        if made.get("server") is not None:
            made["server"].close(timeout=1.0)
    if stop.name is not None:
        print(f"agent stopped ({stop.name})", file=sys.stderr, flush=True)
        return stop.exit_code
    if "error" in made:
        error = made["error"]
        if isinstance(error, CLIError):
            raise error
        print(f"error: the agent stopped: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print("the run ended; agent stopped", file=sys.stderr, flush=True)
    return 0


def _llm_policy(args: argparse.Namespace) -> tuple[Any, Any]:
    """The LLM policy against --llm-url / OPENAI_BASE_URL, or the local model served here."""
    from ray_interactive.agents.llm import ChatClient, LLMPolicy
    from ray_interactive.agents.llm_server import endpoint

    given = args.llm_url or os.environ.get("OPENAI_BASE_URL")
    if not given:
        print("loading the local model (SmolLM2-135M-Instruct) and serving it on localhost ...", flush=True)
    try:
        url, server = endpoint(given)
    except FileNotFoundError as e:
        raise CLIError(str(e)) from None
    # a hosted endpoint may reject the non-standard guided_choice: constrain only our own server by default
    constrain = args.llm_constrain if args.llm_constrain is not None else server is not None
    return LLMPolicy(ChatClient(url, model=args.llm_model), constrain=constrain, task=args.task), server


def cmd_llm_serve(args: argparse.Namespace) -> int:
    """Serve the local model over the OpenAI protocol until Ctrl-C (one model for many agents)."""
    from ray_interactive.agents.llm_server import LocalServer, load_smollm2

    try:
        backend = load_smollm2()
    except FileNotFoundError as e:
        raise CLIError(str(e)) from None
    with LocalServer(backend, host=args.host, port=args.port) as server:
        print(f"serving {backend.name} at {server.url} (OpenAI chat completions; guided_choice supported)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    client = _connect(args, finished_ok=True)
    if getattr(client, "read_only", False):
        print(f"run {args.run!r} has ended: its data buffer is gone; the live rows it stored are in {client.run_dir / 'buffer'}")
        return 0
    sources, stats = client.sources(), client.data_status()
    if args.json:
        print(json.dumps({"sources": sources, "stats": stats}, indent=1, default=str))
        return 0
    per = stats.get("sources", {})
    for name, info in sources.items():
        st = per.get(name, {})
        kind = "live" if info["live"] else "static"
        waiting = "  (no data yet: left out of batches)" if info["waiting_for_data"] else ""
        print(f"{name:16} {kind:6} {info['policy']:8} {info['rows']:>10} rows  weight {info['weight']:.3g} "
              f"(drawn {info['effective_weight']:.2f})  {st.get('bytes', 0) / 2**20:8.1f} MiB  "
              f"{st.get('ingest_rows_per_s', 0):8.1f} rows/s  {info['rejected']} rejected{waiting}")
        if info.get("storage_error") or st.get("storage_error"):
            print(f"  STORAGE FAILED, ingests refused: {info.get('storage_error') or st['storage_error']}")
    for sh in stats.get("shards", []):  # buffer_shards > 1: how the primary's merge goes
        ago = f"{time.time() - sh['pulled_at']:.1f} s ago" if sh.get("pulled_at") else "not yet"
        trouble = f"  NOT ANSWERING: {sh['error']}" if sh.get("error") else ""
        print(f"shard {sh['shard']:<10} merged {sh['copied_rows']:>10} rows into the primary since it started, "
              f"last pull {ago}{trouble}")
    for r in stats.get("rejections", [])[-10:]:
        when = time.strftime("%H:%M:%S", time.localtime(r["time"]))
        print(f"  rejected {when} {r['source']}: {r['message']}")
    return 0


def cmd_ingest_url(args: argparse.Namespace) -> int:
    from ray_interactive.runtime.ingest_server import ingest_info

    _connect(args)
    try:
        info = ingest_info(args.run, args.namespace)
    except LookupError as e:
        raise CLIError(str(e)) from None
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(info["url"])
    print(f"  token: {info['token_file']}")
    print(f"  curl -H \"Authorization: Bearer $(cat {info['token_file']})\" "
          f"-H 'Content-Type: application/vnd.apache.arrow.stream' --data-binary @rows.arrows "
          f"{info['url']}/v1/sources/SOURCE/ingest")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    client = _connect(args, finished_ok=True)
    versions = client.weight_versions()
    if args.json:
        print(json.dumps(versions, indent=1))
        return 0
    if not versions:
        print("no weights published yet (set publish_every, or send publish_weights)")
    for v in versions:
        when = time.strftime("%H:%M:%S", time.localtime(v["time"]))
        print(f"v{v['version']:<5} step {v['step']:>8}  branch {v['branch']:16} {v['reason']:15} "
              f"{v['num_params'] / 1e6:8.2f}M params {v['nbytes'] / 2**20:9.1f} MiB  {when}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    """Run a ray-interactive command on a cluster as a Ray job (``ray job submit``), with the
    project directory as its ``working_dir`` (``.rayignore`` keeps .venv, runs/ ... out)."""
    import shlex
    import urllib.parse

    from ray_interactive.core.paths import JOB_RUNS_ROOT, RUNS_ENV
    from ray_interactive.runtime.jobs import JobServer

    rest = [a for a in args.command if a != "--"] if args.command else []
    if not rest or rest[0] not in COMMANDS:
        raise CLIError("say what to run after '--', e.g.: ray-interactive submit -- run --example tiny-lm --name exp1")
    address = args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or "http://127.0.0.1:8265"
    if "://" not in address:
        address = f"http://{address}"
    host = urllib.parse.urlparse(address).hostname or ""
    # The job's driver runs on the head: this interpreter only if the head is this machine.
    python = args.python or (sys.executable if host in ("127.0.0.1", "localhost", "::1") else "python")
    working_dir = Path(args.working_dir).resolve()
    if not (working_dir / "ray_interactive").is_dir() and not args.no_working_dir:
        raise CLIError(f"{working_dir} is not the project directory (no ray_interactive/ in it); give --working-dir")
    entrypoint = shlex.join([python, "-m", "ray_interactive.cli", *rest])
    # Runs live outside the job's upload folder, which Ray deletes: this shell's runs root
    # when the head is this machine, else what --runs-dir says (default: ~/ray-interactive-runs there).
    local = host in ("127.0.0.1", "localhost", "::1")
    runs_dir = args.runs_dir
    if runs_dir and not (runs_dir.startswith(("/", "~"))):
        if not local:
            raise CLIError(f"--runs-dir {runs_dir!r}: give an absolute path on the head (a job starts in Ray's upload folder)")
        runs_dir = str(Path(runs_dir).resolve())
    runs_dir = runs_dir or (str(_runs_root().resolve()) if local else None)
    try:
        server = JobServer(address)
    except ConnectionError as e:
        raise CLIError(f"{e} (a cluster's dashboard port, e.g. through `ray dashboard ray_cluster.yaml`)") from None
    job = server.submit(entrypoint, None if args.no_working_dir else str(working_dir), args.job_id,
                        env_vars={RUNS_ENV: runs_dir} if runs_dir else None)
    print(f"submitted job {job} to {address}: {entrypoint}")
    print(f"  runs in: {runs_dir or JOB_RUNS_ROOT + ' on the head'} (a run's own --run-dir wins)")
    # Ray's job CLI reads RAY_AUTH_MODE itself: without it a token-auth cluster refuses it.
    auth = "RAY_AUTH_MODE=token " if (Path.home() / ".ray" / "auth_token").exists() else ""
    print(f"  logs:   {auth}ray job logs {job} --address {address} --follow")
    print(f"  stop:   {auth}ray job stop {job} --address {address}   (or `ray-interactive send RUN stop`)")
    if not args.wait:
        return 0
    ok, status, logs = server.wait(job)
    print(logs)
    print(f"job {job}: {status}")
    return 0 if ok else 1


def cmd_runs(args: argparse.Namespace) -> int:
    """Running runs (by name), then the finished ones under ./runs (their directories)."""
    from ray_interactive.runtime.client import list_runs
    from ray_interactive.runtime.connection import init_ray

    running: list[str] = []
    try:
        init_ray(args.address, namespace=args.namespace, default="auto", quiet=True)
        running = list_runs(args.namespace)
    except ConnectionError as e:
        print(f"({e})", file=sys.stderr)
    for name in running:
        print(name)
    root = _runs_root()
    finished = sorted(d.name for d in root.iterdir() if (d / "config.json").is_file() and d.name not in running) if root.is_dir() else []
    if finished:
        print(f"finished, in {root}/ (status, log, checkpoints and ui read them): {', '.join(finished)}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    from ray_interactive.core.paths import DEFAULT_NAMESPACE

    p = argparse.ArgumentParser(prog="ray-interactive", description="Steer training runs on Ray while they run.")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS, else local)")
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE, type=_nonempty)
    p.add_argument("--runs-dir", dest="runs_dir", type=_nonempty, default=None,
                   help="where runs live (default: RAY_INTERACTIVE_RUNS, else ./runs); with submit: on the head")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    def run_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--name", help="run name (also the name to attach by)")
        sp.add_argument("--max-steps", type=int, dest="max_steps")
        sp.add_argument("--duration", type=_seconds, help="stop cleanly after this many seconds")
        sp.add_argument("--lr", type=float)
        sp.add_argument("--batch-size", type=int, dest="batch_size")
        sp.add_argument("--checkpoint-every", type=int, dest="checkpoint_every")
        sp.add_argument("--workers", type=int, dest="workers",
                        help="data-parallel workers (DDP under Ray Train; each takes trainer_num_cpus and a GPU if any)")
        sp.add_argument("--buffer-shards", type=int, dest="buffer_shards",
                        help="data buffer actors, spread over the nodes; ingests are spread over them by batch_id")
        sp.add_argument("--eval-every", type=int, dest="eval_every")
        sp.add_argument("--publish-every", type=int, dest="publish_every", help="publish weights every N steps")
        sp.add_argument("--run-dir", dest="run_dir")
        sp.add_argument("--task-arg", action="append", metavar="K=V", help="keyword argument of the task")
        sp.add_argument("--set", action="append", metavar="K=V", help="any RunConfig field, e.g. schedule.kind=cosine")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")
        sp.add_argument("--http-ingest", dest="http_ingest", metavar="[HOST:]PORT",
                        help="serve ingest over HTTP (port 0: a free one; the URL and token go to the run dir)")

    sp = sub.add_parser("run", help="start a run (embedded local Ray, or the cluster at RAY_ADDRESS)")
    what = sp.add_mutually_exclusive_group()
    what.add_argument("--example", choices=sorted(EXAMPLES))
    what.add_argument("--task", help="package.module:TaskClass")
    what.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its latest checkpoint")
    what.add_argument("--replay", metavar="RUN_DIR", help="a new run (--name) that replays RUN_DIR's commands")
    sp.add_argument("--from", dest="from_checkpoint", metavar="CKPT", help="with --resume: this checkpoint")
    sp.add_argument("--config", help="a RunConfig as JSON")
    sp.add_argument("--detach", action="store_true", help="leave the run going after this process exits")
    sp.add_argument("--ui", action="store_true", help="also serve the control UI from this process")
    _ui_options(sp)
    run_options(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser(
        "demo", help="the first demo: a small GPT-2 on WikiText-2, steered by a scripted tour (the main job is "
        "`make demo`, the NeuralOS loop)"
    )
    sp.add_argument("--data", default=None, help="WikiText-2 directory (default: a generated corpus)")
    sp.add_argument("--no-tour", action="store_true", help="no scripted commands; steer it yourself")
    sp.add_argument("--no-ui", action="store_true", help="do not serve the control UI")
    _ui_options(sp)
    run_options(sp)
    sp.set_defaults(func=cmd_demo, duration=None)

    sp = sub.add_parser("ui", help="serve the control UI of a run (Gradio; a finished run read-only)")
    sp.add_argument("run")
    _ui_options(sp)
    sp.set_defaults(func=cmd_ui)

    for name, func, helptext in (
        ("status", cmd_status, "a run's status and latest metrics (a finished run: from runs/RUN or a RUN_DIR)"),
        ("log", cmd_log, "a run's command log (running or finished)"),
        ("checkpoints", cmd_checkpoints, "a run's checkpoints (running or finished)"),
        ("weights", cmd_weights, "a run's published weight versions"),
        ("data", cmd_data, "a run's data sources: rows, bytes, ingest rate, rejections"),
    ):
        sp = sub.add_parser(name, help=helptext)
        sp.add_argument("run")
        if name in ("status", "weights", "data"):
            sp.add_argument("--json", action="store_true")
        if name == "log":
            sp.add_argument("-n", type=int, default=None, help="only the last N")
            sp.add_argument("--json", action="store_true")
        sp.set_defaults(func=func)

    sp = sub.add_parser("agent", help="an agent that watches a run and steers it through commands (journal in the run dir)")
    sp.add_argument("run")
    sp.add_argument("--policy", choices=["rule", "llm", "lookahead", "mixture"], default="rule",
                    help="rule: oscillation, divergence, plateau detectors; llm: a chat model picks an action; "
                    "lookahead: tries its moves on branches and continues on the best; mixture: more data from "
                    "the sources whose evaluation lags (--track)")
    sp.add_argument("--track", action="append", metavar="SOURCE=METRIC",
                    help="mixture: a source and its own eval metric (two or more), e.g. rare=eval/rare/success")
    sp.add_argument("--higher-is-better", action="store_true", dest="higher_is_better",
                    help="mixture: the tracked metrics are scores (success), not losses")
    sp.add_argument("--update-ceiling", action="append", metavar="MODULE=RATIO", dest="update_ceiling",
                    help="rule: halve the lr while the module's sampled update/weight ratio is above RATIO "
                    "(needs diagnostics_every; see docs/health_indicators.md), e.g. transformer.h.0=0.008")
    sp.add_argument("--horizon", type=int, default=50, help="lookahead: steps each candidate trains")
    sp.add_argument("--factors", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                    help="lookahead: the lr factors it tries (1 keeps the lr)")
    sp.add_argument("--at-start", action="store_true", dest="at_start",
                    help="lookahead: the first exploration as soon as the run trains")
    sp.add_argument("--check", action="store_true",
                    help="llm: try the model's move on a branch for --horizon steps against keeping the lr, "
                    "and keep it only if it does better")
    sp.add_argument("--margin", type=float, default=0.0,
                    help="lookahead: a change must beat keeping the lr by this fraction of the metric")
    sp.add_argument("--every", type=int, default=50, help="decide every N steps")
    sp.add_argument("--at-eval", action="store_true", dest="at_eval", help="decide at each evaluation instead")
    sp.add_argument("--llm-url", default=None, dest="llm_url",
                    help="OpenAI-compatible base URL (default: $OPENAI_BASE_URL, else the local SmolLM2 served here)")
    sp.add_argument("--llm-model", default=None, dest="llm_model", help="model name sent to the endpoint")
    sp.add_argument("--llm-constrain", default=None, dest="llm_constrain", action=argparse.BooleanOptionalAction,
                    help="send guided_choice so the reply is one of the actions (default: only for the local model)")
    sp.add_argument("--task", default="train a language model; lower validation loss is better",
                    help="what the run trains, as the LLM's prompt says it")
    sp.add_argument("--min-interval", type=_seconds, default=10.0, dest="min_interval",
                    help="guardrail: at most one command this often (s)")
    sp.add_argument("--max-lr-drift", type=float, default=10.0, dest="max_lr_drift",
                    help="guardrail: the lr moves at most this factor, up or down, within --drift-window steps")
    sp.add_argument("--drift-window", type=int, default=500, dest="drift_window",
                    help="guardrail: the window of --max-lr-drift, in steps")
    sp.set_defaults(func=cmd_agent)

    sp = sub.add_parser("llm-serve", help="serve the local LLM (SmolLM2-135M-Instruct) over the OpenAI protocol")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=_port, default=8000)
    sp.set_defaults(func=cmd_llm_serve)

    sp = sub.add_parser("kinds", help="the command kinds and their arguments (what send takes)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_kinds)

    sp = sub.add_parser("send", help="send a command: send RUN KIND key=value ... (kinds: see `kinds`)")
    sp.add_argument("run")
    sp.add_argument("kind")
    sp.add_argument("fields", nargs="*", metavar="key=value")
    sp.add_argument("--comment")
    sp.add_argument("--wait", action="store_true", help="wait until it is applied")
    sp.add_argument("--timeout", type=_seconds, default=60.0)
    sp.set_defaults(func=cmd_send)

    sp = sub.add_parser("cancel", help="withdraw a pending command: cancel RUN '#12' (its number) or its id")
    sp.add_argument("run")
    sp.add_argument("target", metavar="#SEQ|ID")
    sp.add_argument("--timeout", type=_seconds, default=60.0)
    sp.set_defaults(func=cmd_cancel)

    sp = sub.add_parser("ingest-url", help="where a run serves HTTP ingest, and its token file")
    sp.add_argument("run")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_ingest_url)

    sp = sub.add_parser("runs", help="list running runs, and the finished ones in the runs root (./runs)")
    sp.set_defaults(func=cmd_runs)

    sp = sub.add_parser(
        "submit", help="run a command on a Ray cluster as a job: submit [--address URL] -- run --example tiny-lm ..."
    )
    sp.add_argument("--address", help="the job server (the dashboard's http address); default RAY_API_SERVER_ADDRESS "
                    "or http://127.0.0.1:8265")
    sp.add_argument("--python", help="the interpreter on the head that runs it (default: this one for a local head, "
                    "else `python`, the one ray_cluster.yaml installs the project into)")
    sp.add_argument("--working-dir", default=".", help="the project directory to upload (default: .)")
    sp.add_argument("--no-working-dir", action="store_true", help="do not upload: the head has the project installed")
    sp.add_argument("--job-id", help="a submission id of your choosing")
    sp.add_argument("--wait", action="store_true", help="wait for the job to end; print its logs; exit 1 unless it succeeded")
    sp.add_argument("command", nargs=argparse.REMAINDER, help="-- then a ray-interactive command")
    sp.set_defaults(func=cmd_submit)
    COMMANDS.update(sub.choices)
    return p


#: The subcommands (filled in by make_parser): what `submit` may run on a cluster.
COMMANDS: dict[str, Any] = {}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    parser = make_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_text_args(args, parser)
        if args.runs_dir and args.cmd != "submit":
            from ray_interactive.core.paths import RUNS_ENV

            os.environ[RUNS_ENV] = args.runs_dir
        return args.func(args)
    except CLIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def check_text_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Refuse any argument that is not valid text, before anything is sent or connected.

    Python turns a byte that is not UTF-8 in argv into a lone surrogate, which cannot be
    encoded again: in a comment, a name or a value it would reach Ray (whose ray.init even
    records the whole command line) and come back as a long traceback."""
    names = _argument_names(parser, COMMANDS.get(getattr(args, "cmd", None) or ""))
    for dest, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            problem = _text_problem(text) if isinstance(text, str) else None
            if problem:
                raise CLIError(f"argument {names.get(dest, dest)}: {problem}")


def _argument_names(*parsers: argparse.ArgumentParser | None) -> dict[str, str]:
    """``dest -> --option`` (or the positional's name), as argparse's own errors name them."""
    names: dict[str, str] = {}
    for parser in parsers:
        for action in parser._actions if parser is not None else ():
            names[action.dest] = "/".join(action.option_strings) or str(action.metavar or action.dest)
    return names


def _text_problem(text: str) -> str | None:
    """What makes ``text`` unsendable (None if nothing): the first byte that is not UTF-8."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        char = ord(text[e.start])
        if 0xDC80 <= char <= 0xDCFF:  # how Python's argv keeps a byte that is not UTF-8
            return (f"not valid text: byte 0x{char - 0xDC00:02x} at position {e.start} is not UTF-8 "
                    "(check the shell's quoting and the terminal's encoding)")
        return f"not valid text: a lone surrogate (U+{char:04X}) at position {e.start}"


def _seconds(text: str) -> float:
    """argparse type of --timeout, --duration ...: NaN or a negative number would make a
    wait loop forever or end at once."""
    from ray_interactive.core.plain import seconds

    try:
        return seconds(float(text), "it")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds from 0 to 1e9, got {text!r}") from None


def _nonempty(text: str) -> str:
    """argparse type of a name that must not be empty (Ray's own error for an empty
    namespace is a traceback)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _port(text: str) -> int:
    """argparse type of a TCP port (0: a free one)."""
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


if __name__ == "__main__":
    sys.exit(main())
