"""Typed command records: what people, agents and scripts can ask a run to do.

Every command is data: a pydantic model per kind (one module per kind in
:mod:`~ray_interactive.core.commands.kinds`, holding its fields, its check at submission,
its effect and what UIs offer of it), joined in the discriminated union :data:`Command`.
A command carries who sent it and when; once submitted, the controller wraps it in a
:class:`CommandRecord` with a sequence number and a status that moves ``accepted ->
applied | failed | cancelled`` (or is ``rejected`` at submission with the reason).
"""

from __future__ import annotations

from ray_interactive.core.commands.base import (
    CHECKPOINT_ID_PATTERN,
    COMMAND_ID_PATTERN,
    COMMON_FIELDS,
    KINDS,
    MAX_AT_STEP,
    MAX_DEPTH,
    MAX_STRING,
    MAX_TEXT_BYTES,
    MAX_VALUES,
    NAME_PATTERN,
    ArgInfo,
    CommandBase,
    CommandSource,
    CommandStatus,
    KindInfo,
    RunView,
    check_name,
    check_payload_shape,
    describe_validation_error,
    gate,
    kind_info,
    loggable,
)
from ray_interactive.core.commands.kinds.cancel import Cancel
from ray_interactive.core.commands.kinds.evaluate import Evaluate
from ray_interactive.core.commands.kinds.load_checkpoint import LoadCheckpoint
from ray_interactive.core.commands.kinds.pause import Pause
from ray_interactive.core.commands.kinds.publish_weights import PublishWeights
from ray_interactive.core.commands.kinds.reset_optimizer_state import ResetOptimizerState
from ray_interactive.core.commands.kinds.resume import Resume
from ray_interactive.core.commands.kinds.save_checkpoint import SaveCheckpoint
from ray_interactive.core.commands.kinds.set_data_mixture import SetDataMixture
from ray_interactive.core.commands.kinds.set_grad_accumulation import SetGradAccumulation
from ray_interactive.core.commands.kinds.set_grad_clip import SetGradClip
from ray_interactive.core.commands.kinds.set_lr_schedule import SetLRSchedule
from ray_interactive.core.commands.kinds.stop import Stop
from ray_interactive.core.commands.kinds.update_module import UpdateModule
from ray_interactive.core.commands.kinds.update_optimizer import UpdateOptimizer
from ray_interactive.core.commands.record import COMMAND_ADAPTER, COMMAND_KINDS, Command, CommandRecord, parse_command
from ray_interactive.core.mixture import MAX_WEIGHT

__all__ = [
    "CHECKPOINT_ID_PATTERN", "COMMAND_ADAPTER", "COMMAND_ID_PATTERN", "COMMAND_KINDS", "COMMON_FIELDS", "KINDS",
    "MAX_AT_STEP", "MAX_DEPTH", "MAX_STRING", "MAX_TEXT_BYTES", "MAX_VALUES", "MAX_WEIGHT", "NAME_PATTERN",
    "ArgInfo", "Cancel", "Command", "CommandBase", "CommandRecord", "CommandSource", "CommandStatus", "Evaluate",
    "KindInfo", "LoadCheckpoint", "Pause", "PublishWeights", "ResetOptimizerState", "Resume", "RunView",
    "SaveCheckpoint", "SetDataMixture", "SetGradAccumulation", "SetGradClip", "SetLRSchedule", "Stop",
    "UpdateModule", "UpdateOptimizer", "check_name", "check_payload_shape", "describe_validation_error", "gate",
    "kind_info", "loggable", "parse_command",
]
