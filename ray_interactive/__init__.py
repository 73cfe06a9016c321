"""ray_interactive: steer a training run while it runs, on Ray.

The pieces: :mod:`~ray_interactive.core.commands` (what can be asked of a run),
:mod:`~ray_interactive.core.controller`, :mod:`~ray_interactive.train.trainer` and
:mod:`~ray_interactive.data.buffer` (the three actors' logic), :mod:`~ray_interactive.runtime.client`
(attach to a run from any process) and :mod:`~ray_interactive.cli`.
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
    from ray_interactive.core.commands import Command, CommandRecord, CommandSource, CommandStatus, parse_command
    from ray_interactive.core.config import BufferConfig, RunConfig, ScheduleConfig, TaskSpec
    from ray_interactive.core.state import RunStatus, TrainState
    from ray_interactive.core.steering import Steering
    from ray_interactive.core.task import DataSource, Task
    from ray_interactive.runtime.client import RunClient, RunNotFound, WeightSubscriber, connect, list_runs
    from ray_interactive.runtime.launch import RunHandle, start_run
    from ray_interactive.runtime.offline import FinishedRun
    from ray_interactive.serve.weights import WeightVersion, pack_state, unpack_state
    from ray_interactive.train.loop import Session, steer

# Imported on first use, so that `ray_interactive.serve.ingest_client` (an app that posts rows
# over HTTP) imports neither Ray nor torch.
_EXPORTS = {
    "runtime.client": ("RunClient", "RunNotFound", "WeightSubscriber", "connect", "list_runs"),
    "core.commands": ("Command", "CommandRecord", "CommandSource", "CommandStatus", "parse_command"),
    "core.config": ("BufferConfig", "RunConfig", "ScheduleConfig", "TaskSpec"),
    "runtime.launch": ("RunHandle", "start_run"),
    "train.loop": ("Session", "steer"),
    "core.state": ("RunStatus", "TrainState"),
    "core.steering": ("Steering",),
    "runtime.offline": ("FinishedRun",),
    "core.task": ("DataSource", "Task"),
    "serve.weights": ("WeightVersion", "pack_state", "unpack_state"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


#: Modules reached as attributes: ``ri.hf.steer(trainer, run=...)`` (imports transformers).
_SUBMODULES = {"hf": "train.hf"}


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
    "BufferConfig",
    "Command",
    "CommandRecord",
    "CommandSource",
    "CommandStatus",
    "DataSource",
    "FinishedRun",
    "RunClient",
    "RunConfig",
    "RunHandle",
    "RunNotFound",
    "RunStatus",
    "Session",
    "Steering",
    "TrainState",
    "ScheduleConfig",
    "Task",
    "TaskSpec",
    "WeightSubscriber",
    "WeightVersion",
    "connect",
    "list_runs",
    "pack_state",
    "parse_command",
    "start_run",
    "steer",
    "unpack_state",
]

__version__ = "0.1.0"
