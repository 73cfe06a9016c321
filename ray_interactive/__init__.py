"""ray_interactive: steer a training run while it runs, on Ray.

The pieces: :mod:`~ray_interactive.commands` (what can be asked of a run),
:mod:`~ray_interactive.controller`, :mod:`~ray_interactive.trainer` and
:mod:`~ray_interactive.buffer` (the three actors' logic), :mod:`~ray_interactive.client`
(attach to a run from any process) and :mod:`~ray_interactive.cli`.
"""

from ray_interactive.client import RunClient, RunNotFound, connect, list_runs
from ray_interactive.commands import Command, CommandRecord, CommandSource, CommandStatus, parse_command
from ray_interactive.config import RunConfig, ScheduleConfig, TaskSpec
from ray_interactive.launch import RunHandle, start_run
from ray_interactive.task import DataSource, Task

__all__ = [
    "Command",
    "CommandRecord",
    "CommandSource",
    "CommandStatus",
    "DataSource",
    "RunClient",
    "RunConfig",
    "RunHandle",
    "RunNotFound",
    "ScheduleConfig",
    "Task",
    "TaskSpec",
    "connect",
    "list_runs",
    "parse_command",
    "start_run",
]

__version__ = "0.1.0"
