"""The controller: the single source of truth about a run.

It validates and numbers commands, hands accepted ones to the trainer, records every
command and its outcome in an append-only log (``commands.jsonl``), and keeps the run's
status, metric history per branch and checkpoint tree. It is a plain class; the Ray actor
in :mod:`ray_interactive.actors` is a locked shell around it.

Run directory layout::

    config.json        the RunConfig
    commands.jsonl     one JSON record per line: each command when submitted and again
                       at each status change (the last line of an id is its state)
    metrics/part-*.parquet
    branches.json      branch -> parent branch, fork checkpoint and step
    checkpoints/<id>/  see ray_interactive.checkpoints
    weights.jsonl      one line per published weight version (its metadata; the weights
                       themselves live in the Ray object store while the run does)
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray_interactive.checkpoints import list_checkpoints
from ray_interactive.commands import (
    Command,
    CommandRecord,
    CommandSource,
    CommandStatus,
    LoadCheckpoint,
    SetDataMixture,
    Stop,
    check_name,
    parse_command,
)
from ray_interactive.config import RunConfig
from ray_interactive.metrics import MetricStore
from ray_interactive.validation import RunView, validate, validate_mixture
from ray_interactive.weights import WeightRegistry

log = logging.getLogger(__name__)

ROOT_BRANCH = "main"


def _loggable(payload: Any, limit: int = 2000) -> Any:
    """A JSON-safe, bounded copy of an arbitrary (possibly hostile) payload."""
    try:
        text = json.dumps(payload, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        text = json.dumps(repr(payload)[:limit])
    if len(text) > limit:
        return text[:limit] + "...(truncated)"
    return json.loads(text)


class Controller:
    """Commands, status, metrics and checkpoint tree of one run."""

    def __init__(
        self,
        config: RunConfig,
        deliver: Callable[[list[CommandRecord]], None] | None = None,
        recover: bool = False,
    ) -> None:
        self.config = config
        self.run_dir = config.resolved_run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._deliver = deliver or (lambda records: None)
        self._pending_mixtures: dict[int, dict[str, float]] = {}  # accepted, not yet applied
        self.records: dict[str, CommandRecord] = {}
        self._counts: dict[str, int] = {}  # records per status, kept as they change
        self.next_seq = 1
        self.view = RunView(branches={ROOT_BRANCH})
        self.trainer_status: dict[str, Any] = {"status": "starting", "step": 0, "branch": ROOT_BRANCH}
        self.snapshot: dict[str, Any] = {}
        self.data_stats: dict[str, Any] = {}
        self.checkpoints: dict[str, dict[str, Any]] = {}
        self.branches: dict[str, dict[str, Any]] = {
            ROOT_BRANCH: {"parent": None, "checkpoint": None, "fork_step": None, "created_at": time.time()}
        }
        self.metrics = MetricStore()
        self.weight_registry = WeightRegistry(keep=config.weights_keep)
        self.started_at = time.time()
        self._last_flush = time.monotonic()
        config.save(self.run_dir / "config.json")  # on resume too: its overrides (max_steps, ...) persist
        if recover:
            self._recover()
        self._log = open(self.run_dir / "commands.jsonl", "a", encoding="utf-8")
        if recover:  # commands accepted but never applied died with the old trainer
            self._fail_pending("the run ended before it was applied")

    # -- commands ----------------------------------------------------------------------
    def submit(self, payload: Any, source: str | None = None) -> CommandRecord:
        """Validate, number and queue a command; always returns its record.

        ``source`` overrides the payload's own (the UI stamps its commands ``ui``). A
        command whose id was seen before is not queued twice: the first record returns.
        """
        try:
            cmd = parse_command(payload)
            if source is not None:
                cmd = cmd.model_copy(update={"source": CommandSource(source)})
        except ValueError as e:
            record = CommandRecord(command=None, payload=_loggable(payload), status=CommandStatus.REJECTED, message=str(e))
            self._store(record, key=uuid.uuid4().hex)
            return record
        seen = self.records.get(cmd.id)
        if seen is not None and seen.status is not CommandStatus.REJECTED:
            return seen  # a retry of an accepted command: not queued twice
        try:
            validate(cmd, self.view)
        except ValueError as e:
            record = CommandRecord(command=cmd, status=CommandStatus.REJECTED, message=str(e))
            self._store(record)
            return record
        if isinstance(cmd, LoadCheckpoint) and cmd.branch is None:
            cmd = cmd.model_copy(update={"branch": self._new_branch_name(cmd.checkpoint_id)})
        if isinstance(cmd, LoadCheckpoint):
            self.view.branches.add(cmd.branch)  # reserve the name now: two loads can't share it
        if isinstance(cmd, Stop) and cmd.at_step is None:  # a replayed stop ends the run later
            self.view.stopping = True
        if isinstance(cmd, SetDataMixture):
            # The mixture as it will be once accepted commands apply: the next one is checked
            # against this, so two commands can't together zero every weight.
            self.view.mixture = validate_mixture(self.view.mixture, cmd.weights)
            self._pending_mixtures[self.next_seq] = cmd.weights
        record = CommandRecord(command=cmd, seq=self.next_seq, status=CommandStatus.ACCEPTED)
        self.next_seq += 1
        self._store(record)
        self._deliver([record])
        return record

    def _new_branch_name(self, checkpoint_id: str) -> str:
        base = self.checkpoints.get(checkpoint_id, {}).get("branch", ROOT_BRANCH)[:56]  # room for "-<n>"
        n = 1
        while f"{base}-{n}" in self.view.branches:
            n += 1
        return check_name(f"{base}-{n}", "branch")

    def _store(self, record: CommandRecord, key: str | None = None) -> None:
        key = key or record.id or uuid.uuid4().hex
        old = self.records.get(key)
        if old is not None:
            self._counts[old.status.value] -= 1
        self._counts[record.status.value] = self._counts.get(record.status.value, 0) + 1
        if record.status.is_final and record.seq is not None:
            self._pending_mixtures.pop(record.seq, None)
        self.records[key] = record  # a known key keeps its place: the dict is in submission order
        self._log.write(record.model_dump_json() + "\n")
        self._log.flush()  # on disk (page cache) before the answer goes out

    def command_outcomes(
        self,
        records: list[dict[str, Any]],
        snapshot: dict[str, Any] | None = None,
        status: dict[str, Any] | None = None,
        events: list[tuple[str, Any]] | None = None,
    ) -> None:
        """The trainer applied (or failed to apply) commands; ``snapshot``, ``status`` and
        ``events`` (checkpoints written, branches made) are what they left behind."""
        self._trainer_events(events)
        for record in records:
            self._store(CommandRecord.model_validate(record))
        if snapshot is not None:
            self.trainer_snapshot(snapshot)
        if status is not None:
            self._update_status(status)

    def _trainer_events(self, events: list[tuple[str, Any]] | None) -> None:
        """Checkpoints, branches and rewinds ride along with the call that reports their
        effect (calls to a threaded actor may be reordered), so they are known first."""
        handlers = {"checkpoint": self.checkpoint_saved, "branch": self.branch_created, "rewind": self.branch_rewound}
        for name, args in events or []:
            handlers[name](*args)

    def get_command(self, command_id: str) -> CommandRecord | None:
        return self.records.get(command_id)

    def commands(self, limit: int | None = None, newest_first: bool = False) -> list[dict[str, Any]]:
        """Command records as dicts, in submission order (or newest first)."""
        recs = list(self.records.values())
        if newest_first:
            recs.reverse()
        if limit is not None:
            recs = recs[:limit] if newest_first else recs[-limit:]
        return [_record_row(r) for r in recs]

    # -- trainer events ----------------------------------------------------------------
    def trainer_progress(
        self,
        branch: str,
        status: dict[str, Any],
        rows: list[tuple[int, float, dict[str, float]]],
        events: list[tuple[str, Any]] | None = None,
    ) -> None:
        self._trainer_events(events)
        self.metrics.record(branch, rows)
        self._update_status(status)
        self.maybe_flush()

    def buffer_stats(self, stats: dict[str, Any]) -> None:
        """The data buffer's figures: kept for :meth:`data_status` and logged as metrics
        of the current branch at the trainer's current step."""
        if stats.get("time", 0) < self.data_stats.get("time", 0):  # reordered: keep the newest
            return
        self.data_stats = stats
        row: dict[str, float] = {"data/memory_mb": stats["memory_bytes"] / 2**20, "data/rejected": stats["rejected"]}
        for name, s in stats["sources"].items():
            if not s["live"]:
                continue
            row[f"data/{name}/rows"] = s["rows"]
            row[f"data/{name}/mb"] = s["bytes"] / 2**20
            row[f"data/{name}/ingest_rows_per_s"] = s["ingest_rows_per_s"]
            row[f"data/{name}/ingest_mb_per_s"] = s["ingest_bytes_per_s"] / 2**20
            row[f"data/{name}/rejected"] = s["rejected"]
        branch = self.trainer_status.get("branch", ROOT_BRANCH)
        self.metrics.record(branch, [(int(self.trainer_status.get("step", 0)), stats["time"], row)])

    def data_status(self) -> dict[str, Any]:
        """The buffer's latest figures: rows, bytes and ingest rate per source, rejections."""
        return dict(self.data_stats)

    def _update_status(self, status: dict[str, Any]) -> None:
        if status.get("time", 0) >= self.trainer_status.get("time", 0):  # calls may arrive out of order
            self.trainer_status = status
            self.view.status = status["status"]
            self.view.step = status["step"]
            if status["status"] in ("stopped", "failed"):
                self._fail_pending(f"the run {status['status']} before it was applied ({status.get('message') or ''})")

    def _fail_pending(self, message: str) -> None:
        """Accepted commands that can no longer be applied: the trainer is gone."""
        for r in [r for r in self.records.values() if r.status is CommandStatus.ACCEPTED]:
            self._store(r.model_copy(update={"status": CommandStatus.FAILED, "message": message[:500]}))

    def trainer_snapshot(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot
        self.view.groups = snapshot["groups"]
        self.view.modules = snapshot["modules"]
        self.view.has_eval = snapshot["has_eval"]
        # The trainer's mixture is the truth (a load or resume restores an older one);
        # mixture commands accepted but not yet applied still count on top of it.
        mixture = dict(snapshot["mixture"])
        for seq in sorted(self._pending_mixtures):
            mixture.update(self._pending_mixtures[seq])
        self.view.mixture = mixture

    def checkpoint_saved(self, info: dict[str, Any]) -> None:
        self.checkpoints[info["id"]] = info
        self.view.checkpoints.add(info["id"])

    def branch_created(self, name: str, parent: str, checkpoint: str, step: int) -> None:
        self.branches[name] = {"parent": parent, "checkpoint": checkpoint, "fork_step": step, "created_at": time.time()}
        self.view.branches.add(name)
        tmp = self.run_dir / "branches.json.tmp"
        tmp.write_text(json.dumps(self.branches, indent=1))
        tmp.replace(self.run_dir / "branches.json")

    def branch_rewound(self, branch: str, step: int) -> None:
        self.metrics.rewind(branch, step, time.time())

    def weights_published(self, meta: dict[str, Any], refs: list[Any]) -> None:
        """The trainer put a version of its weights in the object store (``refs[0]``; in a
        list so that Ray passes the reference, not the weights)."""
        entry = self.weight_registry.add(meta, refs[0])
        with open(self.run_dir / "weights.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry.to_dict()) + "\n")

    def weights(self, version: int | None = None) -> tuple[dict[str, Any], Any] | None:
        """``(metadata, ref)`` of the latest version (None if none yet) or of ``version``
        (``ValueError`` naming the available ones if it is not kept)."""
        entry = self.weight_registry.latest() if version is None else self.weight_registry.get(version)
        return None if entry is None else (entry.to_dict(), entry.ref)

    def weight_versions(self) -> list[dict[str, Any]]:
        return self.weight_registry.versions()

    def next_weight_version(self) -> int:
        return self.weight_registry.next_version

    def mark_failed(self, message: str) -> None:
        """The trainer died without saying so (its process is gone)."""
        self._update_status({**self.trainer_status, "status": "failed", "message": message, "time": time.time()})
        self.flush()

    # -- queries -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        counts = {k: v for k, v in self._counts.items() if v}
        return {
            "run": self.config.name,
            "run_dir": str(self.run_dir),
            **self.trainer_status,
            "started_at": self.started_at,
            "commands": counts,
            "checkpoints": len(self.checkpoints),
            "branches": sorted(self.branches),
            "weights_version": latest.version if (latest := self.weight_registry.latest()) else None,
        }

    def lineage(self, branch: str) -> list[tuple[str, int | None]]:
        """``[(root, fork_step), ..., (branch, None)]``: whose metrics a branch continues."""
        chain: list[tuple[str, int | None]] = [(branch, None)]
        seen = {branch}
        while (parent := self.branches.get(chain[0][0], {}).get("parent")) and parent not in seen:
            seen.add(parent)
            chain.insert(0, (parent, self.branches[chain[0][0]]["fork_step"]))
        return chain

    def get_metrics(
        self,
        branch: str | None = None,
        keys: list[str] | None = None,
        since: int | None = None,
        max_points: int | None = None,
        include_ancestors: bool = False,
        until: int | None = None,
    ) -> dict[str, dict[str, list[Any]]]:
        """Metric series of a branch (default: the current one), optionally thinned."""
        branch = branch or self.trainer_status.get("branch", ROOT_BRANCH)
        if branch not in self.branches and branch not in self.metrics.series:
            raise ValueError(f"no branch {branch!r}; branches: {', '.join(sorted(self.branches))}")
        lineage = self.lineage(branch) if include_ancestors else [(branch, None)]
        return self.metrics.query(lineage, keys, since, max_points, until)

    def metric_keys(self, branch: str | None = None) -> list[str]:
        return self.metrics.keys(branch or self.trainer_status.get("branch", ROOT_BRANCH))

    def list_checkpoints(self) -> list[dict[str, Any]]:
        return sorted(self.checkpoints.values(), key=lambda c: c["created_at"])

    def list_branches(self) -> dict[str, dict[str, Any]]:
        return dict(self.branches)

    # -- persistence -------------------------------------------------------------------
    def maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.config.metrics_flush_s:
            self.flush()

    def flush(self) -> None:
        """Write metrics not yet on disk."""
        self._last_flush = time.monotonic()
        self.metrics.flush(self.run_dir / "metrics")

    def close(self) -> None:
        self.flush()
        self._log.close()

    def _recover(self) -> None:
        """Rebuild state from the run directory (a resumed run, a restarted actor)."""
        self.records = read_command_log(self.run_dir / "commands.jsonl")
        for r in self.records.values():
            self._counts[r.status.value] = self._counts.get(r.status.value, 0) + 1
        seqs = [r.seq for r in self.records.values() if r.seq is not None]
        self.next_seq = max(seqs, default=0) + 1
        for info in list_checkpoints(self.run_dir / "checkpoints"):
            self.checkpoint_saved(info.to_dict())
        branches = self.run_dir / "branches.json"
        if branches.exists():
            self.branches.update(json.loads(branches.read_text()))
            self.view.branches |= set(self.branches)
        self.metrics = MetricStore.load(self.run_dir / "metrics")
        # The weights died with the old trainer; their numbers are not reused.
        self.weight_registry.next_version = _last_weight_version(self.run_dir / "weights.jsonl") + 1


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
        # An unparseable payload may carry any id: never let it stand for a real command.
        records[rec.id if rec.command is not None and rec.id else f"rejected-line{i}"] = rec
    return records


def _last_weight_version(path: Path) -> int:
    """The highest version number in a ``weights.jsonl`` (0 if none)."""
    last = 0
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                last = max(last, int(json.loads(line)["version"]))
            except (ValueError, KeyError, TypeError):
                continue
    return last


def replay_commands(path: Path) -> list[Command]:
    """The applied commands of a log, in order, each pinned to the step it took effect at."""
    applied = [r for r in read_command_log(path).values() if r.status is CommandStatus.APPLIED and r.command]
    applied.sort(key=lambda r: r.seq or 0)
    # A stop that later commands followed was undone by a resume: replaying it would end early.
    applied = [r for i, r in enumerate(applied) if not (isinstance(r.command, Stop) and i < len(applied) - 1)]
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


def _record_row(r: CommandRecord) -> dict[str, Any]:
    """A flat, JSON-safe view of a record for tables and agents."""
    cmd = r.command
    args = {}
    if cmd is not None:
        args = cmd.model_dump(mode="json", exclude={"id", "kind", "source", "issued_at", "at_step", "comment"})
    return {
        "id": r.id,
        "seq": r.seq,
        "kind": r.kind,
        "source": cmd.source.value if cmd is not None else None,
        "args": args if cmd is not None else r.payload,
        "status": r.status.value,
        "message": r.message,
        "issued_at": cmd.issued_at if cmd is not None else None,
        "received_at": r.received_at,
        "applied_at": r.applied_at,
        "applied_step": r.applied_step,
        "branch": r.branch,
        "at_step": cmd.at_step if cmd is not None else None,
        "comment": cmd.comment if cmd is not None else None,
    }
