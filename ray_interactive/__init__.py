"""ray_interactive: steer a training run while it runs, on Ray.

The layers, each importing only those before it (``tests/test_unit_layout.py``):

* ``core/`` - commands (one module per kind), the controller's logic, the steering core
  every training loop calls, checkpoints, weights, the typed wire; no Ray;
* ``data/`` - the data buffer: durable Arrow segments, mixture sampling;
* ``train/`` and ``serve/`` - the front-ends (our Trainer on one rank or many, Hugging
  Face, a plain loop) and the deployed side's plain parts (HTTP ingest);
* ``runtime/`` - Ray, and only here: the actors, the client, launching, the wire over Ray;
* ``agents/``, ``ui/`` - agents and the control UI's logic, clients of a run;
* the public API (this module, :mod:`ray_interactive.hf`) and the CLI.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

# Ray reads RAY_AUTH_MODE when it is imported: a process attaching to a local cluster with
# token auth (Ray's default) must have it set before anything imports ray, or the cluster
# answers "InvalidAuthToken". Importing ray_interactive first is enough. (Once ray is
# imported, changing it only makes Python and Ray's core disagree: leave it then.)
if "ray" not in sys.modules and "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
    os.environ["RAY_AUTH_MODE"] = "token"
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray_interactive.agents.lookahead import LookaheadAgent
    from ray_interactive.agents.mixture import MixturePolicy
    from ray_interactive.agents.runtime import AgentRunner, Observation, RulePolicy
    from ray_interactive.core.commands import (
        Command,
        CommandRecord,
        CommandSource,
        CommandStatus,
        kind_info,
        parse_command,
    )
    from ray_interactive.core.config import BufferConfig, RunConfig, ScheduleConfig, TaskSpec
    from ray_interactive.core.retry import call_with_retry, retrying
    from ray_interactive.core.state import RunStatus, TrainState
    from ray_interactive.core.steering import Steering
    from ray_interactive.core.task import DataSource, Task, column_array
    from ray_interactive.core.weights import WeightVersion, pack_state, unpack_state
    from ray_interactive.data.buffer import DataBuffer
    from ray_interactive.data.coalesce import IngestBackpressure, IngestClosed, IngestCoalescer
    from ray_interactive.frontends import steer
    from ray_interactive.runtime.client import RunClient, RunNotFound, WeightSubscriber, connect, list_runs
    from ray_interactive.runtime.judge import CanaryJudge
    from ray_interactive.runtime.launch import RunHandle, start_run
    from ray_interactive.runtime.offline import FinishedRun, attach
    from ray_interactive.runtime.serving import ReplicaLink, deploy, undeploy
    from ray_interactive.summary import print_summary, url_banner, watch_run
    from ray_interactive.train.loop import Session
    from ray_interactive.ui.access import check_bind, read_auth
    from ray_interactive.ui.control_ui import control_blocks, launch_options, serve_control_ui

# The public API, imported on first use, so that `ray_interactive.serve.ingest_client` (an
# app that posts rows over HTTP) imports neither Ray nor torch. Apps and the demo use only
# these names (tests/test_unit_layout.py keeps it so).
_EXPORTS = {
    "runtime.client": ("RunClient", "RunNotFound", "WeightSubscriber", "connect", "list_runs"),
    "core.commands": ("Command", "CommandRecord", "CommandSource", "CommandStatus", "kind_info", "parse_command"),
    "core.config": ("BufferConfig", "RunConfig", "ScheduleConfig", "TaskSpec"),
    "core.retry": ("call_with_retry", "retrying"),
    "runtime.launch": ("RunHandle", "start_run"),
    "frontends": ("steer",),
    "train.loop": ("Session",),
    "core.state": ("RunStatus", "TrainState"),
    "core.steering": ("Steering",),
    "runtime.offline": ("FinishedRun", "attach"),
    "runtime.serving": ("ReplicaLink", "deploy", "undeploy"),
    "runtime.judge": ("CanaryJudge",),
    "agents.lookahead": ("LookaheadAgent",),
    "agents.mixture": ("MixturePolicy",),
    "agents.runtime": ("AgentRunner", "Observation", "RulePolicy"),
    "core.task": ("DataSource", "Task", "column_array"),
    "core.weights": ("WeightVersion", "pack_state", "unpack_state"),
    "data.buffer": ("DataBuffer",),
    "data.coalesce": ("IngestBackpressure", "IngestClosed", "IngestCoalescer"),
    "summary": ("print_summary", "url_banner", "watch_run"),
    "ui.access": ("check_bind", "read_auth"),
    "ui.control_ui": ("control_blocks", "launch_options", "serve_control_ui"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


#: Modules reached as attributes: ``ri.hf.steer(trainer, run=...)`` (imports transformers), ``ri.chat.*``.
_SUBMODULES = {"hf": "hf", "chat": "chat"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{_SUBMODULES[name]}")
        globals()[name] = value
        return value
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "AgentRunner",
    "BufferConfig",
    "CanaryJudge",
    "Command",
    "CommandRecord",
    "CommandSource",
    "CommandStatus",
    "DataBuffer",
    "DataSource",
    "FinishedRun",
    "IngestBackpressure",
    "IngestClosed",
    "IngestCoalescer",
    "LookaheadAgent",
    "MixturePolicy",
    "Observation",
    "ReplicaLink",
    "RulePolicy",
    "RunClient",
    "RunConfig",
    "RunHandle",
    "RunNotFound",
    "RunStatus",
    "ScheduleConfig",
    "Session",
    "Steering",
    "Task",
    "TaskSpec",
    "TrainState",
    "WeightSubscriber",
    "WeightVersion",
    "attach",
    "call_with_retry",
    "check_bind",
    "column_array",
    "connect",
    "control_blocks",
    "deploy",
    "kind_info",
    "launch_options",
    "list_runs",
    "pack_state",
    "parse_command",
    "print_summary",
    "read_auth",
    "retrying",
    "serve_control_ui",
    "start_run",
    "steer",
    "undeploy",
    "unpack_state",
    "url_banner",
    "watch_run",
]

__version__ = "0.1.0"
