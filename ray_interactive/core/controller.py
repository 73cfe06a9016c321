"""The controller: the single source of truth about a run.

It validates and numbers commands, hands accepted ones to the trainer, records every
command and its outcome in an append-only log (``commands.jsonl``), and keeps the run's
status, metric history per branch and checkpoint tree. It is a plain class; the Ray actor
in :mod:`ray_interactive.runtime.actors` is a locked shell around it.

Run directory layout::

    config.json        the RunConfig
    commands.jsonl     one JSON record per line: each command when submitted and again
                       at each status change (the last line of an id is its state)
    metrics/part-*.parquet
    branches.json      branch -> parent branch, fork checkpoint and step
    checkpoints/<id>/  see ray_interactive.core.checkpoints
    weights.jsonl      one line per published weight version (its metadata; the weights
                       themselves live in the Ray object store while the run does)
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray_interactive.core.checkpoints import list_checkpoints
from ray_interactive.core.commands import (
    Cancel,
    Command,
    CommandRecord,
    CommandSource,
    CommandStatus,
    LoadCheckpoint,
    SetDataMixture,
    Stop,
    UpdateModule,
    check_name,
    loggable,
    parse_command,
)
from ray_interactive.core.config import RunConfig
from ray_interactive.core.messages import BufferStats, RunEvent, Snapshot, TrainerStatus
from ray_interactive.core.metrics import MetricStore
from ray_interactive.core.recovery import Recovery, reapply_records
from ray_interactive.core.validation import RunView, resolve_cancel, validate, validate_mixture
from ray_interactive.serve.weights import WeightRegistry

log = logging.getLogger(__name__)

ROOT_BRANCH = "main"
#: Fields the controller fills in when it accepts a command: a retry may leave them out.
_FILLED_BY_CONTROLLER = ("branch", "command_id", "seq")


class Controller:
    """Commands, status, metrics and checkpoint tree of one run."""

    def __init__(
        self,
        config: RunConfig,
        deliver: Callable[[list[CommandRecord]], None] | None = None,
        recover: bool | str = False,
        read_only: bool = False,
    ) -> None:
        """``recover``: rebuild from the run directory - ``True``/``"resume"`` for a resumed
        run (commands the old trainer never applied fail), ``"restart"`` for a controller
        restarted under a live trainer (they are still on their way: nothing fails).
        ``read_only``: a view of a run directory that writes nothing (a finished run
        opened for inspection); it takes no commands and no trainer events."""
        self.config = config
        self.run_dir = config.resolved_run_dir
        self.read_only = read_only
        if not read_only:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._deliver = deliver or (lambda records: None)
        self._pending_mixtures: dict[int, dict[str, float]] = {}  # accepted, not yet applied
        self.records: dict[str, CommandRecord] = {}
        self._counts: dict[str, int] = {}  # records per status, kept as they change
        self.next_seq = 1
        self.view = RunView(branches={ROOT_BRANCH}, max_steps=config.max_steps)
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
        self.recovery: Recovery | None = None  # the trainer is being restarted
        self.released: list[CommandRecord] = []  # held during a recovery, now due to the trainer
        self.stop_requested = False  # a stop came for a run that had already ended: release it
        self.storage_error: str | None = None  # the run directory could not be written
        self._last_step_seen = (0, time.monotonic())  # (step, when it was first reported): a stall shows
        if recover:
            self._recover()
        if read_only:
            self._log: _CommandLog | None = None
            return
        if recover != "restart":
            config.save(self.run_dir / "config.json")  # on resume too: its overrides (max_steps, ...) persist
        self._log = _CommandLog(self.run_dir / "commands.jsonl")
        if recover and recover != "restart":  # commands accepted but never applied died with the old trainer
            self._fail_pending("the run ended before it was applied")

    # -- commands ----------------------------------------------------------------------
    def submit(self, payload: Any, source: str | None = None) -> CommandRecord:
        """Validate, number and queue a command; always returns its record.

        ``source`` overrides the payload's own (the UI stamps its commands ``ui``). A
        command id seen before is not queued twice: the same command again (a retry) gets
        the first record back; a different command under that id is rejected.
        """
        if self.read_only:
            raise ValueError("this is a read-only view of a run directory; it takes no commands")
        try:
            cmd = parse_command(payload)
            if source is not None:
                cmd = cmd.model_copy(update={"source": CommandSource(source)})
        except ValueError as e:
            return self.refuse(payload, str(e))
        seen = self.records.get(cmd.id)
        if seen is not None and seen.status is not CommandStatus.REJECTED:
            if _same_command(seen.command, cmd):
                return seen  # a retry of an accepted command: not queued twice
            message = (
                f"command id {cmd.id!r} is already taken by #{seen.seq} {seen.kind} ({seen.status.value}) with other "
                "arguments; a retry must repeat the same command, a new command needs a new id"
            )
            record = CommandRecord(command=cmd, status=CommandStatus.REJECTED, message=message)
            self._store(record, key=uuid.uuid4().hex)  # the first record keeps its id
            return record
        if isinstance(cmd, Stop) and self.view.status in ("failed", "stopped"):
            return self._stop_ended_run(cmd)
        try:
            validate(cmd, self.view)
            if isinstance(cmd, Cancel):
                target = resolve_cancel(list(self.records.values()), cmd.command_id, cmd.seq)
                cmd = cmd.model_copy(update={"command_id": target.id, "seq": target.seq})
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
        if isinstance(cmd, UpdateModule) and cmd.op == "freeze":
            self.view.pending_freezes[self.next_seq] = cmd.module
        record = CommandRecord(command=cmd, seq=self.next_seq, status=CommandStatus.ACCEPTED)
        try:
            self._store(record)
        except OSError as e:
            if not isinstance(cmd, Stop):  # not in the log, so not a command: nothing is sent on
                return self._unlogged(cmd, e)
            # A stop must work on a full disk: kept in memory, it ends the run cleanly.
            self._store_outcome(record)
        self.next_seq += 1
        if self.recovery is not None:
            self.recovery.held.append(record)  # goes out once the trainer is back where it died
        else:
            self._deliver([record])
        return record

    def _stop_ended_run(self, cmd: Stop) -> CommandRecord:
        """A stop for a run whose trainer has ended (failed, say): nothing to send it to;
        it is applied here, and the run's owner releases its actors."""
        now = time.time()
        record = CommandRecord(
            command=cmd, seq=self.next_seq, status=CommandStatus.APPLIED, applied_at=now,
            applied_step=int(self.trainer_status.get("step", 0)), branch=self.trainer_status.get("branch"),
            message=f"the run had already ended ({self.trainer_status.get('status')}); its actors are released",
        )
        try:
            self._store(record)
        except OSError as e:
            return self._unlogged(cmd, e)
        self.next_seq += 1
        self.stop_requested = True
        return record

    def _unlogged(self, cmd: Command, error: OSError) -> CommandRecord:
        self.storage_error = f"the command log could not be written: {error}"
        log.error(self.storage_error)
        return CommandRecord(
            command=cmd, status=CommandStatus.REJECTED,
            message=f"refused: the run directory cannot be written ({error}); free space and send it again",
        )

    def refuse(self, payload: Any, message: str) -> CommandRecord:
        """Log a payload that is not a command (a clipped copy) as rejected, with why."""
        record = CommandRecord(command=None, payload=loggable(payload), status=CommandStatus.REJECTED, message=message[:2000])
        self._store(record, key=uuid.uuid4().hex)
        return record

    def _new_branch_name(self, checkpoint_id: str) -> str:
        base = self.checkpoints.get(checkpoint_id, {}).get("branch", ROOT_BRANCH)[:56]  # room for "-<n>"
        n = 1
        while f"{base}-{n}" in self.view.branches:
            n += 1
        return check_name(f"{base}-{n}", "branch")

    def _store(self, record: CommandRecord, key: str | None = None) -> None:
        """Log the record, then keep it (a record that cannot be logged raises ``OSError``
        and is not kept: what clients see is what the log holds)."""
        key = key or record.id or uuid.uuid4().hex
        assert self._log is not None, "read-only"
        self._log.append(record.model_dump_json())
        self._keep(record, key)

    def _keep(self, record: CommandRecord, key: str) -> None:
        old = self.records.get(key)
        if old is not None:
            self._counts[old.status.value] -= 1
        self._counts[record.status.value] = self._counts.get(record.status.value, 0) + 1
        if record.status.is_final and record.seq is not None:
            self._pending_mixtures.pop(record.seq, None)
            self.view.pending_freezes.pop(record.seq, None)
        self.records[key] = record  # a known key keeps its place: the dict is in submission order

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
            rec = CommandRecord.model_validate(record)
            if self.recovery is not None and rec.id in self.recovery.reapply:
                self.recovery.reapply.discard(rec.id)  # applied again: the log has it already
                if rec.status is not CommandStatus.APPLIED:
                    log.warning("re-applying #%s %s after a restart failed: %s", rec.seq, rec.kind, rec.message)
                continue
            self._store_outcome(rec)
        if snapshot is not None:
            self.trainer_snapshot(snapshot)
        if status is not None:
            self._update_status(status)

    def _trainer_events(self, events: list[tuple[str, Any]] | None) -> None:
        """Checkpoints, branches and rewinds ride along with the call that reports their
        effect (calls to a threaded actor may be reordered), so they are known first."""
        handlers = {
            "checkpoint": self.checkpoint_saved,
            "checkpoints_removed": self.checkpoints_removed,
            "branch": self.branch_created,
            "rewind": self.branch_rewound,
            "event": self.system_event,
        }
        for name, args in events or []:
            handlers[name](*args)

    def system_event(self, event: dict[str, Any]) -> None:
        """Something the run did on its own (the health guard paused it, say): an entry in
        the command history (source ``system``, not numbered: the trainer never received
        it), and the commands it asks for, submitted as ``system`` commands."""
        ev = RunEvent.model_validate(event)
        message = ev.message[:2000]
        self._store_outcome(
            CommandRecord(
                command=None,
                payload={"kind": ev.kind[:64]},
                event="system",
                status=CommandStatus.FAILED if ev.failed else CommandStatus.APPLIED,
                message=message,
                applied_at=ev.time,
                applied_step=ev.step,
                branch=ev.branch,
            ),
            key=uuid.uuid4().hex,
        )
        for payload in ev.submit:
            rec = self.submit({**payload, "comment": message}, source="system")
            if rec.status is CommandStatus.REJECTED:
                log.warning("system command %s rejected: %s", payload.get("kind"), rec.message)

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
        st = BufferStats.model_validate(stats)
        if st.time < self.data_stats.get("time", 0):  # reordered: keep the newest
            return
        self.data_stats = st.model_dump(mode="json")
        row: dict[str, float] = {"data/memory_mb": st.memory_bytes / 2**20, "data/rejected": st.rejected}
        for name, s in st.sources.items():
            if not s.live:
                continue
            row[f"data/{name}/rows"] = s.rows
            row[f"data/{name}/mb"] = s.bytes / 2**20
            row[f"data/{name}/ingest_rows_per_s"] = s.ingest_rows_per_s
            row[f"data/{name}/ingest_mb_per_s"] = s.ingest_bytes_per_s / 2**20
            row[f"data/{name}/rejected"] = s.rejected
        branch = self.trainer_status.get("branch", ROOT_BRANCH)
        self.metrics.record(branch, [(int(self.trainer_status.get("step", 0)), st.time, row)])

    def data_status(self) -> dict[str, Any]:
        """The buffer's latest figures: rows, bytes and ingest rate per source, rejections."""
        return dict(self.data_stats)

    def _store_outcome(self, record: CommandRecord, key: str | None = None) -> None:
        """What the trainer did is kept even when the log cannot take it (a full disk):
        clients see the truth, and the error is in the status."""
        try:
            self._store(record, key)
        except OSError as e:
            self.storage_error = f"the command log could not be written: {e}"
            log.error("%s (#%s %s kept in memory only)", self.storage_error, record.seq, record.kind)
            self._keep(record, key or record.id or uuid.uuid4().hex)

    def _update_status(self, status: dict[str, Any]) -> None:
        st = TrainerStatus.model_validate(status)
        if st.time >= self.trainer_status.get("time", 0):  # calls may arrive out of order
            self.trainer_status = st.model_dump(mode="json")
            self.view.status = st.status.value
            self.view.step = st.step
            if st.step != self._last_step_seen[0]:
                self._last_step_seen = (st.step, time.monotonic())
            if st.status.is_final:
                self._fail_pending(f"the run {st.status.value} before it was applied ({st.message or ''})")
            self._maybe_end_recovery()

    def _fail_pending(self, message: str) -> None:
        """Accepted commands that can no longer be applied: the trainer is gone."""
        for r in [r for r in self.records.values() if r.status is CommandStatus.ACCEPTED]:
            self._store_outcome(r.model_copy(update={"status": CommandStatus.FAILED, "message": message[:500]}))

    # -- trainer restarts --------------------------------------------------------------
    def begin_recovery(self, reason: str) -> tuple[str | None, list[CommandRecord], int]:
        """The trainer died and is being restarted. Returns the checkpoint directory it
        restarts from (None: the start), the commands it applies again (pinned to their
        steps) and the number of the first command it has not seen. Until it is back where
        it died, the status says ``recovering`` and new commands wait."""
        ckpts = list_checkpoints(self.run_dir / "checkpoints")
        ckpt = ckpts[-1] if ckpts else None
        again = reapply_records(list(self.records.values()), ckpt, self.run_dir / "checkpoints")
        pending = sorted((r for r in self.records.values() if r.status is CommandStatus.ACCEPTED), key=lambda r: r.seq or 0)
        died_at = (str(self.trainer_status.get("branch", ROOT_BRANCH)), int(self.trainer_status.get("step", 0)))
        self.recovery = Recovery(reason, ckpt, died_at, {r.id for r in again if r.id}, held=pending)
        where = f"checkpoint {ckpt.id}" if ckpt else "the start (no checkpoint yet)"
        self.system_event({
            "kind": "trainer_lost", "message": f"trainer lost ({reason}); restarting from {where}, applying "
            f"{len(again)} command(s) again", "step": died_at[1], "branch": died_at[0], "time": time.time(), "failed": True,
        })
        path = str(self.run_dir / "checkpoints" / ckpt.id) if ckpt else None
        return path, again, self.next_seq

    def _maybe_end_recovery(self) -> None:
        rec = self.recovery
        st = self.trainer_status
        if rec is None or not rec.caught_up(str(st.get("status")), str(st.get("branch")), int(st.get("step", 0))):
            return
        self.recovery = None
        took = time.time() - rec.started
        self.system_event({
            "kind": "recovered", "message": f"recovered in {took:.1f} s: back at step {st.get('step')} on "
            f"{st.get('branch')} after the trainer was lost ({rec.reason})", "step": int(st.get("step", 0)),
            "branch": str(st.get("branch")), "time": time.time(),
        })
        held = [self.records.get(r.id or "", r) for r in rec.held]
        # A cancel may have withdrawn one. Numbered before the commands the restarted trainer
        # was given, they are handed over as such (the actor takes ``released``).
        self.released.extend(r for r in held if r.status is CommandStatus.ACCEPTED)

    def recovery_failed(self, message: str) -> None:
        """The trainer could not be restarted: the run has failed, with why."""
        self.recovery = None
        self.mark_failed(message)

    def trainer_snapshot(self, snapshot: dict[str, Any]) -> None:
        snap = Snapshot.model_validate(snapshot)
        self.snapshot = snap.model_dump(mode="json")
        self.view.groups = snap.groups
        self.view.modules = snap.modules
        self.view.has_eval = snap.has_eval
        self.view.trainable = snap.trainable
        self.view.unsupported = dict(snap.unsupported)
        # The trainer's mixture is the truth (a load or resume restores an older one);
        # mixture commands accepted but not yet applied still count on top of it.
        mixture = dict(snap.mixture)
        for seq in sorted(self._pending_mixtures):
            mixture.update(self._pending_mixtures[seq])
        self.view.mixture = mixture

    def checkpoint_saved(self, info: dict[str, Any]) -> None:
        self.checkpoints[info["id"]] = info
        self.view.checkpoints.add(info["id"])

    def checkpoints_removed(self, ids: list[str]) -> None:
        """The retention policy deleted these checkpoints."""
        for cid in ids:
            self.checkpoints.pop(cid, None)
            self.view.checkpoints.discard(cid)

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

    def stalled_for(self) -> float | None:
        """Seconds since the step last moved, if the run says ``running`` and that is longer
        than ``stall_after_s`` (a hung or stopped trainer process); else None."""
        if self.trainer_status.get("status") != "running" or self.recovery is not None:
            return None
        idle = time.monotonic() - self._last_step_seen[1]
        return idle if idle >= self.config.stall_after_s else None

    # -- queries -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        counts = {k: v for k, v in self._counts.items() if v}
        trainer = dict(self.trainer_status)
        if self.recovery is not None:
            trainer.update(status="recovering", message=self.recovery.describe())
        elif (idle := self.stalled_for()) is not None:
            trainer.update(status="stalled", samples_per_s=0.0, message=(
                f"no step has completed for {idle:.0f} s (last: step {self._last_step_seen[0]}); the trainer "
                "may be hung or its process stopped"))
        return {
            "run": self.config.name,
            "run_dir": str(self.run_dir),
            **trainer,
            "storage_error": self.storage_error,
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

    def checkpoint_page(self, offset: int = 0, limit: int = 50, branch: str | None = None) -> dict[str, Any]:
        """One page of the checkpoints, newest first (optionally of one branch):
        ``{"total": n, "offset": offset, "rows": [...]}``."""
        rows = [c for c in self.checkpoints.values() if branch in (None, "", c["branch"])]
        rows.sort(key=lambda c: c["created_at"], reverse=True)
        limit = max(1, min(int(limit), 500))
        offset = max(0, int(offset))
        if offset >= len(rows):  # past the end: the last page
            offset = max(0, (len(rows) - 1) // limit * limit)
        return {"total": len(rows), "offset": offset, "rows": rows[offset : offset + limit]}

    def dashboard(
        self,
        keys: list[str],
        since: int | None = None,
        until: int | None = None,
        max_points: int | None = None,
        history: int = 50,
    ) -> dict[str, Any]:
        """Everything a dashboard refresh shows, in one call: status, branches, each
        branch's thinned metric series, the newest commands, settings and data figures."""
        return {
            "status": self.status(),
            "branches": self.list_branches(),
            "metrics": {
                b: self.metrics.query([(b, None)], keys, since, max_points, until) for b in self.branches
            },
            "history": self.commands(limit=history, newest_first=True),
            "snapshot": dict(self.snapshot),
            "data": dict(self.data_stats),
            "metric_keys": self.metric_keys(),
        }

    def list_branches(self) -> dict[str, dict[str, Any]]:
        return dict(self.branches)

    # -- persistence -------------------------------------------------------------------
    def maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.config.metrics_flush_s:
            self.flush()

    def flush(self) -> None:
        """Write metrics not yet on disk, and the status (what a finished run shows)."""
        if self.read_only:
            return
        self._last_flush = time.monotonic()
        tmp = self.run_dir / "status.json.tmp"
        try:
            self.metrics.flush(self.run_dir / "metrics")
            tmp.write_text(json.dumps({**self.status(), "saved_at": time.time()}, default=str))
            tmp.replace(self.run_dir / "status.json")
            self.storage_error = None
        except OSError as e:  # a full disk: metrics stay in memory and are written at the next flush
            tmp.unlink(missing_ok=True)
            self.storage_error = f"metrics and status could not be written: {e}"
            log.error(self.storage_error)

    def close(self) -> None:
        self.flush()
        if self._log is not None:
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


class _CommandLog:
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
    # Entries without a number (system events: the trainer did them on its own) were not
    # commands it received; the replayed run does them itself.
    applied = [
        r for r in read_command_log(path).values() if r.status is CommandStatus.APPLIED and r.command and r.seq is not None
    ]
    applied.sort(key=lambda r: r.seq or 0)
    # A stop that commands applied after it followed was undone by a resume of the run:
    # replaying it would end early. (A pinned stop sent before the last commands is not.)
    last_applied = max((r.applied_at or 0.0 for r in applied), default=0.0)
    applied = [r for r in applied if not (isinstance(r.command, Stop) and (r.applied_at or 0.0) < last_applied)]
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


def _same_command(old: Command | None, new: Command) -> bool:
    """Whether ``new`` repeats ``old`` (a retry): the same kind and arguments; the time it
    was issued and fields the controller filled in on acceptance may differ."""
    if old is None:
        return False
    a, b = old.model_dump(exclude={"issued_at"}), new.model_dump(exclude={"issued_at"})
    for k in _FILLED_BY_CONTROLLER:
        if k in b and b[k] is None:
            a.pop(k, None)
            b.pop(k)
    return a == b


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
        "source": r.source,
        "args": args if cmd is not None else ({} if r.event else r.payload),
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
