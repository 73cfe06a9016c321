"""Continuing a run whose process ended (stopped, killed, crashed) from one of its
checkpoints, for the front-ends whose loop is the caller's (``ri.steer``, ``ri.hf.steer``).

The run directory is the truth: its ``config.json`` is the run's configuration (what the
caller passes again may change settings, not the name), its newest checkpoint - or the one
named - is where training continues, and its command log, metrics and branches go on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ray_interactive.core.checkpoints import CheckpointInfo, list_checkpoints
from ray_interactive.core.config import RunConfig

log = logging.getLogger(__name__)

#: ``resume=``: False (a new run), True (the newest checkpoint), a checkpoint id, or
#: "auto" (the newest checkpoint if the run has one, else a new run).
Resume = bool | str
AUTO = "auto"


def restarted_by_launcher() -> int:
    """How many times a launcher has restarted this job (torchrun ``--max-restarts``)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def resolve_resume(name: str, overrides: dict[str, Any], resume: Resume) -> Resume:
    """What ``resume`` means for run ``name`` now. "auto" - or False when a launcher has
    restarted the job after a failure (torchrun ``--max-restarts``) - is True when the run's
    directory holds a checkpoint (the group comes back from the newest one, with the command
    log after it given again) and False otherwise. Any other value stands."""
    count = restarted_by_launcher()
    if resume != AUTO and (resume or not count):
        return resume
    run_dir = RunConfig(name=name, run_dir=overrides.get("run_dir")).resolved_run_dir
    if not list_checkpoints(run_dir / "checkpoints"):
        return False  # nothing to come back to (a directory holding a run then says why it cannot start)
    why = f"the launcher restarted this job (restart {count})" if count else 'resume="auto"'
    log.warning("%s: run %s continues from its newest checkpoint", why, name)
    return True


def resumed_config(name: str, overrides: dict[str, Any]) -> RunConfig:
    """The configuration of run ``name`` saved in its directory (``overrides['run_dir']``, or
    ``runs/<name>``), with ``overrides`` applied; a clear error if there is no such run."""
    run_dir = RunConfig(name=name, run_dir=overrides.get("run_dir")).resolved_run_dir
    path = run_dir / "config.json"
    if not path.exists():
        raise ValueError(f"cannot resume run {name!r}: {run_dir} holds no run (no config.json); pass the "
                         "run_dir it was started with, or start it anew without resume")
    saved = RunConfig.load(path).model_dump()
    if saved["name"] != name:
        raise ValueError(f"cannot resume: {run_dir} holds run {saved['name']!r}, not {name!r}")
    return RunConfig.model_validate({**saved, **overrides, "run_dir": run_dir})


def resume_point(config: RunConfig, which: Resume) -> CheckpointInfo:
    """The checkpoint ``which`` names (True: the newest) in the run's directory."""
    ckpts = list_checkpoints(config.resolved_run_dir / "checkpoints")
    if not ckpts:
        raise ValueError(f"cannot resume run {config.name!r}: it has no checkpoint yet in "
                         f"{config.resolved_run_dir / 'checkpoints'} (checkpoint_every or checkpoint_interval_s "
                         "write them); start it anew instead")
    if which is True:
        return ckpts[-1]
    found = [c for c in ckpts if c.id == which]
    if not found:
        newest = ", ".join(c.id for c in ckpts[-5:])
        raise ValueError(f"cannot resume run {config.name!r} from {which!r}: no such checkpoint (newest: {newest})")
    return found[0]


def check_resume(which: Any) -> Resume:
    if isinstance(which, bool) or (isinstance(which, str) and which):
        return which
    raise ValueError(f"resume must be True (the newest checkpoint), False, \"auto\" (the newest if there is one) or "
                     f"a checkpoint id, not {which!r}")


def checkpoint_dir(config: RunConfig, info: CheckpointInfo) -> Path:
    return config.resolved_run_dir / "checkpoints" / info.id


def saved_frontend(run_dir: Path) -> str | None:
    """The front-end that trained the run in ``run_dir`` ("trainer", "ddp", "hf", "loop"), as its
    last saved status says (None: unknown)."""
    import json

    try:
        return json.loads((run_dir / "status.json").read_text()).get("frontend")
    except (OSError, ValueError, AttributeError):
        return None


def how_to_resume(config: RunConfig) -> str:
    """What a person does to continue the run: the CLI for our trainer; for a loop in the
    user's own script, that script again with ``resume=True``."""
    run_dir = config.resolved_run_dir
    frontend = saved_frontend(run_dir)
    if config.task is not None:
        return f"resume it with `ray-interactive run --resume {run_dir}`"
    hf = f"ri.hf.steer(trainer, run={config.name!r}, run_dir={str(run_dir)!r}, resume=True)"
    loop = f"ri.steer({config.name!r}, model, optimizer, run_dir={str(run_dir)!r}, resume=True)"
    if frontend == "hf":
        return f"it was trained by a Hugging Face Trainer in your own script: run the script again with {hf}"
    if frontend == "loop":
        return f"it was trained by your own loop: run your script again with {loop}"
    return f"it was trained in your own script: run it again with {loop} (or {hf})"
