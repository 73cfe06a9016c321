"""``commands.jsonl``: the append-only command log of a run, read back and replayed."""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path

from ray_interactive.core.commands import Command, CommandRecord, CommandSource, CommandStatus

log = logging.getLogger(__name__)


class CommandLog:
    """``commands.jsonl``, appended one whole line at a time: a write that fails half way
    (a full disk) is cut back off, so the log never holds half a record."""

    def __init__(self, path: Path) -> None:
        self._f = open(path, "ab", buffering=0)  # noqa: SIM115 - open for the run's life

    def append(self, line: str) -> None:
        data = (line + "\n").encode()
        end = self._f.seek(0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[self._f.write(view) or 0 :]
        except OSError:
            try:
                os.ftruncate(self._f.fileno(), end)
            except OSError:
                log.critical("could not cut a half-written line off %s", self._f.name)
            raise

    def close(self) -> None:
        self._f.close()


def read_command_log(path: Path) -> dict[str, CommandRecord]:
    """The latest record of every command in a ``commands.jsonl`` (unreadable lines skipped)."""
    records: dict[str, CommandRecord] = {}
    if not path.exists():
        return records
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        try:
            rec = CommandRecord.model_validate_json(line)
        except ValueError:
            log.warning("skipping unreadable line %d of %s", i + 1, path)
            continue
        key = rec.id if rec.command is not None and rec.id else f"rejected-line{i}"
        seen = records.get(key)
        if rec.status is CommandStatus.REJECTED and seen is not None and seen.status is not CommandStatus.REJECTED:
            key = f"rejected-line{i}"  # a reused id was refused: the first command keeps it
        # An unparseable payload may carry any id: never let it stand for a real command.
        records[key] = rec
    return records


def replay_commands(path: Path) -> list[Command]:
    """The applied commands of a log, in order, each pinned to the step it took effect at."""
    # Entries without a number (system events: the trainer did them on its own) were not
    # commands it received; the replayed run does them itself.
    applied = [
        r for r in read_command_log(path).values() if r.status is CommandStatus.APPLIED and r.command and r.seq is not None
    ]
    applied.sort(key=lambda r: r.seq or 0)
    # A stop that commands applied after it followed was undone by a resume of the run:
    # replaying it would end early. (A pinned stop sent before the last commands is not.)
    last_applied = max((r.applied_at or 0.0 for r in applied), default=0.0)
    applied = [r for r in applied
               if not (r.command is not None and r.command.kind == "stop" and (r.applied_at or 0.0) < last_applied)]
    return [
        r.command.model_copy(  # type: ignore[union-attr]
            update={
                "id": uuid.uuid4().hex,
                "source": CommandSource.REPLAY,
                "at_step": r.applied_step,
                "comment": f"replay of {r.id}",
            }
        )
        for r in applied
    ]


def last_weight_version(path: Path) -> int:
    """The highest version number in a ``weights.jsonl`` (0 if none)."""
    last = 0
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                last = max(last, int(json.loads(line)["version"]))
            except (ValueError, KeyError, TypeError):
                continue
    return last
