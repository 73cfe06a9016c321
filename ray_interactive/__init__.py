"""ray_interactive: steer a training run while it runs, on Ray.

The pieces: :mod:`~ray_interactive.commands` (what can be asked of a run),
:mod:`~ray_interactive.controller`, :mod:`~ray_interactive.trainer` and
:mod:`~ray_interactive.buffer` (the three actors' logic), :mod:`~ray_interactive.client`
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
    from ray_interactive.client import RunClient, RunNotFound, WeightSubscriber, connect, list_runs
    from ray_interactive.commands import Command, CommandRecord, CommandSource, CommandStatus, parse_command
    from ray_interactive.config import BufferConfig, RunConfig, ScheduleConfig, TaskSpec
    from ray_interactive.launch import RunHandle, start_run
    from ray_interactive.loop import Session, steer
    from ray_interactive.offline import FinishedRun
    from ray_interactive.state import RunStatus, TrainState
    from ray_interactive.steering import Steering
    from ray_interactive.task import DataSource, Task
    from ray_interactive.weights import WeightVersion, pack_state, unpack_state

# Imported on first use, so that `ray_interactive.ingest_client` (an app that posts rows
# over HTTP) imports neither Ray nor torch.
_EXPORTS = {
    "client": ("RunClient", "RunNotFound", "WeightSubscriber", "connect", "list_runs"),
    "commands": ("Command", "CommandRecord", "CommandSource", "CommandStatus", "parse_command"),
    "config": ("BufferConfig", "RunConfig", "ScheduleConfig", "TaskSpec"),
    "launch": ("RunHandle", "start_run"),
    "loop": ("Session", "steer"),
    "state": ("RunStatus", "TrainState"),
    "steering": ("Steering",),
    "offline": ("FinishedRun",),
    "task": ("DataSource", "Task"),
    "weights": ("WeightVersion", "pack_state", "unpack_state"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


#: Submodules reached as attributes: ``ri.hf.steer(trainer, run=...)`` (imports transformers).
_SUBMODULES = ("hf",)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
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
