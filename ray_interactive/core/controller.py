"""The controller: the single source of truth about a run.

It checks and numbers commands, keeps accepted ones in an :class:`~ray_interactive.core.outbox.Outbox`
for the training loop to pull, records every command and its outcome in an append-only log
(``commands.jsonl``), and keeps the run's status, metric history per branch and checkpoint
tree. It is a plain class; the Ray actor in :mod:`ray_interactive.runtime.controller_actor`
is a locked shell around it. What it receives from a loop is typed
(:mod:`ray_interactive.core.messages`) and kept typed; its queries answer JSON views for
UIs, the CLI and agents.

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

import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict

from ray_interactive.core.checkpoints import CheckpointInfo, list_checkpoints
from ray_interactive.core.command_log import CommandLog, last_weight_version, read_command_log, replay_commands
from ray_interactive.core.commands import (
    Command,
    CommandRecord,
    CommandSource,
    CommandStatus,
    RunView,
    gate,
    loggable,
    parse_command,
)
from ray_interactive.core.config import RunConfig
from ray_interactive.core.fleet import Fleet
from ray_interactive.core.messages import (
    BranchCreated,
    BranchRewound,
    BufferStats,
    CheckpointSaved,
    CheckpointsRemoved,
    Delivery,
    Outcomes,
    Progress,
    ReplicaOrders,
    ReplicaReport,
    RunEvent,
    Snapshot,
    TrainerEvent,
    TrainerStatus,
)
from ray_interactive.core.metrics import MetricPart, MetricStore
from ray_interactive.core.outbox import Outbox
from ray_interactive.core.plain import one_of
from ray_interactive.core.recovery import Recovery, RestartPlan, reapply_records
from ray_interactive.core.rollout import Rollout
from ray_interactive.core.stalls import StepClock, stall_bound
from ray_interactive.core.state import RunStatus
from ray_interactive.core.trackers import Fork, Rewind, Rows, RunInfo, TrackerFeed, note_of
from ray_interactive.core.weights import WeightRegistry, WeightVersion

__all__ = ["ROOT_BRANCH", "Branch", "Controller", "read_command_log", "replay_commands"]

log = logging.getLogger(__name__)

ROOT_BRANCH = "main"
#: Fields the controller fills in when it accepts a command: a retry may leave them out.
_FILLED_BY_CONTROLLER = ("branch", "command_id", "seq")


class Branch(BaseModel):
    """Where a branch of the run comes from (``branches.json``)."""

    model_config = ConfigDict(extra="forbid")

    parent: str | None = None
    checkpoint: str | None = None  # the checkpoint it was forked from
    fork_step: int | None = None
    created_at: float


class Controller:
    """Commands, status, metrics and checkpoint tree of one run."""

    def __init__(self, config: RunConfig, recover: bool | str = False, read_only: bool = False) -> None:
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
        self.records: dict[str, CommandRecord] = {}
        self._counts: dict[str, int] = {}  # records per status, kept as they change
        self.next_seq = 1
        self.view = RunView(branches={ROOT_BRANCH}, max_steps=config.max_steps, records=self.records)
        self.outbox = Outbox()
        self.trainer_status = TrainerStatus(status=RunStatus.STARTING, step=0, branch=ROOT_BRANCH, time=0.0)
        self.snapshot: Snapshot | None = None
        #: A restarted controller lost the loop's description: the loop's next poll is told to send it.
        self.needs_description = recover == "restart"
        self.data_stats: BufferStats | None = None
        self.checkpoints: dict[str, CheckpointInfo] = {}
        self._newest_first: list[CheckpointInfo] | None = None  # checkpoints sorted for the UI's pages, kept until one changes
        self.branches: dict[str, Branch] = {ROOT_BRANCH: Branch(created_at=time.time())}
        self.metrics = MetricStore()
        self.weight_registry = WeightRegistry(keep=config.weights_keep)
        self.fleet = Fleet(Rollout(config.rollout))  # the deployed replicas of the model, as they report
        self.started_at = time.time()
        self._last_flush = time.monotonic()
        self._saved_step = -1  # the step status.json shows
        # A checkpoint was written at this step: flush once a report has moved past it (then every
        # row of that step is in, e.g. HF's loss, which it logs after the step's control point).
        self._flush_after: tuple[str, int] | None = None  # (branch, step) of a checkpoint whose metrics go to disk
        self._rows_through: dict[str, int] = {}  # per branch: the newest step a metric row came for
        self.recovery: Recovery | None = None  # the trainer is being restarted
        self.incarnation = 0  # the trainer's start whose reports count (each recovery starts a new one)
        self.stop_requested = False  # a stop came for a run that had already ended: release it
        self.storage_error: str | None = None  # the run directory could not be written
        # Where a flush's metric part goes: written here, or handed to a PartWriter (the actor's)
        self.write_part: Callable[[MetricPart], None] | None = None
        self.part_error: str | None = None  # what that writer last failed at (None: fine)
        self.pace = StepClock()  # when the step last moved, and the run's step time: a stall shows
        # checkpoint id -> (reporter, number) of the report whose event about it was applied last
        self._checkpoint_news: dict[str, tuple[str, int]] = {}
        if recover:
            self._recover()
        if read_only:
            self._log: CommandLog | None = None
            self.trackers: TrackerFeed | None = None
            return
        # The run's experiment trackers (report_to), fed from here without waiting on them.
        self.trackers = TrackerFeed(config.report_to, RunInfo(
            config.name, self.run_dir, resumed=bool(recover), mlflow_tracking_uri=config.mlflow_tracking_uri,
        ), flush_s=config.metrics_flush_s) if config.report_to else None
        if recover != "restart":
            config.save(self.run_dir / "config.json")  # on resume too: its overrides (max_steps, ...) persist
        self._log = CommandLog(self.run_dir / "commands.jsonl")
        if recover and recover != "restart":  # commands accepted but never applied died with the old trainer
            self._fail_pending("the run ended before it was applied")
        elif recover == "restart":  # still on their way to the loop, which pulls again
            self.outbox.restart(self.accepted())

    # -- commands ----------------------------------------------------------------------
    def submit(self, payload: Any, source: str | None = None) -> CommandRecord:
        """Check, number and queue a command; always returns its record.

        ``source`` overrides the payload's own (the UI stamps its commands ``ui``). A
        command id seen before is not queued twice: the same command again (a retry) gets
        the first record back; a different command under that id is rejected.
        """
        if self.read_only:
            raise ValueError("this is a read-only view of a run directory; it takes no commands")
        try:
            cmd = parse_command(payload)
            if source is not None:
                cmd = cmd.model_copy(update={"source": one_of(CommandSource, source, "source")})
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
        if cmd.kind == "stop" and self.view.status in ("failed", "stopped"):
            return self._stop_ended_run(cmd)
        try:
            gate(cmd, self.view)
            cmd = cmd.check(self.view)
        except ValueError as e:
            record = CommandRecord(command=cmd, status=CommandStatus.REJECTED, message=str(e))
            self._store(record)
            return record
        if cmd.in_controller:
            return self._apply_here(cmd)
        record = CommandRecord(command=cmd, seq=self.next_seq, status=CommandStatus.ACCEPTED)
        try:
            self._store(record)
        except OSError as e:
            if cmd.kind != "stop":  # not in the log, so not a command: nothing is sent on
                return self._unlogged(cmd, e)
            # A stop must work on a full disk: kept in memory, it ends the run cleanly.
            self._store_outcome(record)
        cmd.accepted(self.view)
        self.next_seq += 1
        if self.recovery is not None:
            self.recovery.held.append(record)  # goes out once the trainer is back where it died
        else:
            self.outbox.add([record])
        return record

    def _apply_here(self, cmd: Command) -> CommandRecord:
        """A kind the controller applies itself (the deployed replicas' rollout): applied or
        refused at once. No number: the training loop never gets it (nor does a replay)."""
        cmd = cmd.for_rollout(self.fleet.rollout)
        try:
            message = cmd.apply_rollout(self.fleet.rollout, {v["version"] for v in self.weight_registry.versions()})
        except ValueError as e:
            record = CommandRecord(command=cmd, status=CommandStatus.REJECTED, message=str(e))
        else:
            st = self.trainer_status
            record = CommandRecord(command=cmd, status=CommandStatus.APPLIED, applied_at=time.time(),
                                   applied_step=st.step, branch=st.branch, message=message)
        try:
            self._store(record)
        except OSError as e:
            return self._unlogged(cmd, e)
        self.weight_registry.keep_also(self.fleet.rollout.keep())
        return record

    def _stop_ended_run(self, cmd: Command) -> CommandRecord:
        """A stop for a run whose trainer has ended (failed, say): nothing to send it to;
        it is applied here, and the run's owner releases its actors."""
        now = time.time()
        st = self.trainer_status
        record = CommandRecord(
            command=cmd, seq=self.next_seq, status=CommandStatus.APPLIED, applied_at=now,
            applied_step=st.step, branch=st.branch,
            message=f"the run had already ended ({st.status.value}); its actors are released",
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

    def _store(self, record: CommandRecord, key: str | None = None) -> None:
        """Log the record, then keep it (a record that cannot be logged raises ``OSError``
        and is not kept: what clients see is what the log holds)."""
        key = key or record.id or uuid.uuid4().hex
        assert self._log is not None, "read-only"
        self._log.append(record.model_dump_json())
        self._keep(record, key)
        if self.trackers is not None and record.status.is_final:
            self.trackers.put(note_of(record, self.trainer_status.branch, self.trainer_status.step))

    def _keep(self, record: CommandRecord, key: str) -> None:
        old = self.records.get(key)
        if old is not None:
            self._counts[old.status.value] -= 1
        self._counts[record.status.value] = self._counts.get(record.status.value, 0) + 1
        if record.seq is not None and record.command is not None:
            if record.status.is_final:
                self.view.pending.pop(record.seq, None)
            else:
                self.view.pending[record.seq] = record.command
        self.records[key] = record  # a known key keeps its place: the dict is in submission order

    def accepted(self) -> list[CommandRecord]:
        """Accepted commands not yet applied, in order."""
        return sorted((r for r in self.records.values() if r.status is CommandStatus.ACCEPTED), key=lambda r: r.seq or 0)

    def pull(self, after_seq: int, incarnation: int = 0) -> Delivery:
        """What the training loop polls for: the commands numbered above ``after_seq``
        (which acknowledges the ones before; released ones come once), and whether it
        should describe itself again. A replaced trainer gets nothing (and acknowledges nothing)."""
        if self.stale(incarnation):
            return Delivery(records=[], describe=False)
        return Delivery(records=self.outbox.take(after_seq), describe=self.needs_description)

    def get_command(self, command_id: str) -> CommandRecord | None:
        return self.records.get(command_id)

    def commands(self, limit: int | None = None, newest_first: bool = False) -> list[dict[str, Any]]:
        """Command records as flat dicts, in submission order (or newest first)."""
        if limit is None:
            recs = list(reversed(self.records.values())) if newest_first else list(self.records.values())
        else:  # the newest ``limit`` without a copy of all (a long run logs 100k commands)
            recs = list(itertools.islice(reversed(self.records.values()), max(0, limit)))
            if not newest_first:
                recs.reverse()
        return [r.row() for r in recs]

    # -- what the training loop reports ------------------------------------------------
    def stale(self, incarnation: int) -> bool:
        """Whether a report comes from a trainer an earlier recovery replaced (a worker of a
        lost group can run on for a moment): ignored. A restarted controller does not know
        the current incarnation and takes the newest it hears."""
        if incarnation < self.incarnation:
            log.info("ignoring a report of trainer incarnation %d (now %d)", incarnation, self.incarnation)
            return True
        self.incarnation = incarnation
        return False

    def command_outcomes(self, report: Outcomes) -> None:
        """The loop applied (or failed to apply) commands; ``report`` also holds the
        snapshot, status and events (checkpoints written, branches made) they left."""
        if self.stale(report.incarnation):
            return
        self._trainer_events(report.events, report)
        for rec in report.records:
            if self.recovery is not None and rec.id in self.recovery.reapply:
                self.recovery.reapply.discard(rec.id)  # applied again: the log has it already
                if rec.status is not CommandStatus.APPLIED:
                    log.warning("re-applying #%s %s after a restart failed: %s", rec.seq, rec.kind, rec.message)
                continue
            self._store_outcome(rec)
        if report.snapshot is not None:
            self.trainer_snapshot(report.snapshot)
        if report.status is not None:
            self._update_status(report.status)
        # The last re-applied outcome may come after a newer status (a threaded actor
        # reorders calls), which a paused trainer may never follow with another.
        self._maybe_end_recovery()

    def trainer_progress(self, report: Progress) -> bool:
        """Take a progress report; True if it put a checkpoint's metrics out to disk (with a
        part writer: handed to it - the caller waits for it before answering the loop)."""
        if self.stale(report.incarnation):
            return False
        self._trainer_events(report.events, report)
        self.metrics.record(report.branch, report.rows)
        if report.rows:
            self._rows_through[report.branch] = max(self._rows_through.get(report.branch, 0), report.rows[-1][0])
        if self.trackers is not None and report.rows:
            self.trackers.put(Rows(report.branch, report.rows))
        self._update_status(report.status)
        # A checkpoint is a resume point: the metrics up to it go to disk with it, as soon as
        # they are all here - its step's row came (in this report or before), or the step moved
        # on. (A run that resumes from it reads them back; a flush left for a later report
        # was lost with a worker group that died before sending one.)
        if self._flush_after is not None and (report.status.step != self._flush_after[1]
                                              or self._rows_through.get(self._flush_after[0], -1) >= self._flush_after[1]):
            self._flush_after = None
            self.flush()
            return True
        self.maybe_flush()
        return False

    def trainer_snapshot(self, snapshot: Snapshot) -> None:
        if self.stale(snapshot.incarnation):
            return
        self.snapshot = snapshot
        self.needs_description = False
        v = self.view
        v.groups, v.modules, v.has_eval, v.trainable = snapshot.groups, snapshot.modules, snapshot.has_eval, snapshot.trainable
        v.unsupported = dict(snapshot.unsupported)
        v.mixture = dict(snapshot.mixture)  # the trainer's mixture is the truth (a load restores an older one)

    def _latest_news(self, cid: str, report: Progress | Outcomes | None) -> bool:
        """Whether ``report`` (numbered by its reporter) is newer than the last one that said
        something of checkpoint ``cid``: calls to a threaded actor may run out of order, and a
        "saved" that arrives after the "removed" retention sent later must not bring it back."""
        if report is None or not report.seq:
            return True
        last = self._checkpoint_news.get(cid)
        if last is not None and last[0] == report.reporter and report.seq < last[1]:
            return False
        self._checkpoint_news[cid] = (report.reporter, report.seq)
        return True

    def _trainer_events(self, events: list[TrainerEvent], report: Progress | Outcomes | None = None) -> None:
        """Checkpoints, branches and rewinds ride along with the report of their effect
        (calls to a threaded actor may be reordered), so they are known first."""
        for event in events:
            if isinstance(event, CheckpointSaved):
                if self._latest_news(event.info.id, report):
                    self.checkpoint_saved(event.info)
                self._flush_after = (event.info.branch, event.info.step)
            elif isinstance(event, CheckpointsRemoved):
                self.checkpoints_removed([c for c in event.ids if self._latest_news(c, report)])
            elif isinstance(event, BranchCreated):
                self.branch_created(event)
            elif isinstance(event, BranchRewound):
                self.metrics.rewind(event.branch, event.step, time.time())
                if event.branch in self._rows_through:  # the rows past it are the old loop's
                    self._rows_through[event.branch] = min(self._rows_through[event.branch], event.step - 1)
                if self.trackers is not None:
                    self.trackers.put(Rewind(event.branch, event.step))
            else:
                self.system_event(event)

    def system_event(self, event: RunEvent) -> None:
        """Something the run did on its own (the health guard paused it, say): an entry in
        the command history (source ``system``, not numbered: the trainer never received
        it), and the commands it asks for, submitted as ``system`` commands."""
        message = event.message[:2000]
        self._store_outcome(
            CommandRecord(
                command=None,
                payload={"kind": event.kind[:64]},
                event="system",
                status=CommandStatus.FAILED if event.failed else CommandStatus.APPLIED,
                message=message,
                applied_at=event.time,
                applied_step=event.step,
                branch=event.branch,
            ),
            key=uuid.uuid4().hex,
        )
        for payload in event.submit:
            rec = self.submit({**payload, "comment": message}, source="system")
            if rec.status is CommandStatus.REJECTED:
                log.warning("system command %s rejected: %s", payload.get("kind"), rec.message)

    def buffer_stats(self, stats: BufferStats) -> None:
        """The data buffer's figures: kept for :meth:`data_status` and logged as metrics
        of the current branch at the trainer's current step."""
        if self.data_stats is not None and stats.time < self.data_stats.time:  # reordered: keep the newest
            return
        self.data_stats = stats
        row: dict[str, float] = {"data/memory_mb": stats.memory_bytes / 2**20, "data/rejected": stats.rejected}
        for name, s in stats.sources.items():
            if not s.live:
                continue
            row[f"data/{name}/rows"] = s.rows
            row[f"data/{name}/mb"] = s.bytes / 2**20
            row[f"data/{name}/ingest_rows_per_s"] = s.ingest_rows_per_s
            row[f"data/{name}/ingest_mb_per_s"] = s.ingest_bytes_per_s / 2**20
            row[f"data/{name}/rejected"] = s.rejected
        self.metrics.record(self.trainer_status.branch, [(self.trainer_status.step, stats.time, row)])
        if self.trackers is not None:
            self.trackers.put(Rows(self.trainer_status.branch, [(self.trainer_status.step, stats.time, row)]))

    def data_status(self) -> dict[str, Any]:
        """The buffer's latest figures: rows, bytes and ingest rate per source, rejections."""
        return self.data_stats.model_dump(mode="json") if self.data_stats is not None else {}

    def _store_outcome(self, record: CommandRecord, key: str | None = None) -> None:
        """What the trainer did is kept even when the log cannot take it (a full disk):
        clients see the truth, and the error is in the status."""
        try:
            self._store(record, key)
        except OSError as e:
            self.storage_error = f"the command log could not be written: {e}"
            log.error("%s (#%s %s kept in memory only)", self.storage_error, record.seq, record.kind)
            self._keep(record, key or record.id or uuid.uuid4().hex)

    def _update_status(self, st: TrainerStatus) -> None:
        if st.time >= self.trainer_status.time:  # calls may arrive out of order
            self.trainer_status = st
            if self.recovery is not None:
                self.recovery.heard = True
            self.view.status = st.status.value
            self.view.step = st.step
            self.pace.seen(st.step, st.status is RunStatus.RUNNING)
            if st.status.is_final:
                self._fail_pending(f"the run {st.status.value} before it was applied ({st.message or ''})")
            self._maybe_end_recovery()

    def _fail_pending(self, message: str) -> None:
        """Accepted commands that can no longer be applied: the trainer is gone."""
        for r in self.accepted():
            self._store_outcome(r.model_copy(update={"status": CommandStatus.FAILED, "message": message[:500]}))

    # -- trainer restarts --------------------------------------------------------------
    def begin_recovery(self, reason: str) -> RestartPlan:
        """The trainer died and is being restarted: where it restarts from, what it applies
        again, and the incarnation it reports as (reports of the lost one are ignored from
        now on). Until it is back where it died, the status says ``recovering`` and new
        commands wait."""
        ckpts = list_checkpoints(self.run_dir / "checkpoints")
        ckpt = ckpts[-1] if ckpts else None
        again = reapply_records(list(self.records.values()), ckpt, self.run_dir / "checkpoints")
        died_at = (self.trainer_status.branch, self.trainer_status.step)
        self.incarnation += 1
        self.recovery = Recovery(reason, ckpt, died_at, {r.id for r in again if r.id}, held=self.accepted(),
                                 last_heard=self.trainer_status.time)
        self.outbox.restart([])  # the restarted loop gets these from the recovery, once it has caught up
        where = f"checkpoint {ckpt.id}" if ckpt else "the start (no checkpoint yet)"
        self.system_event(RunEvent(
            kind="trainer_lost", message=f"trainer lost ({reason}); restarting from {where}, applying "
            f"{len(again)} command(s) again", step=died_at[1], branch=died_at[0], failed=True,
        ))
        path = str(self.run_dir / "checkpoints" / ckpt.id) if ckpt else None
        return RestartPlan(path, again, self.next_seq, self.incarnation)

    def _maybe_end_recovery(self) -> None:
        rec = self.recovery
        st = self.trainer_status
        if rec is None or not rec.caught_up(st.status.value, st.branch, st.step):
            return
        self.recovery = None
        now = time.time()
        self.system_event(RunEvent(
            kind="recovered", message=f"recovered in {now - rec.started:.1f} s from when the loss was noticed "
            f"({now - rec.last_heard:.1f} s since the lost trainer's last report): back at step {st.step} on "
            f"{st.branch} after the trainer was lost ({rec.reason})", step=st.step, branch=st.branch,
        ))
        held = [self.records.get(r.id or "", r) for r in rec.held]
        # A cancel may have withdrawn one. Numbered before the commands the restarted loop
        # was given, they go out as released.
        self.outbox.release([r for r in held if r.status is CommandStatus.ACCEPTED])

    def recovery_failed(self, message: str) -> None:
        """The trainer could not be restarted: the run has failed, with why."""
        self.recovery = None
        self.mark_failed(message)

    def checkpoint_saved(self, info: CheckpointInfo) -> None:
        self.checkpoints[info.id] = info
        self.view.checkpoints.add(info.id)
        self._newest_first = None

    def checkpoints_removed(self, ids: list[str]) -> None:
        """The retention policy deleted these checkpoints."""
        for cid in ids:
            self.checkpoints.pop(cid, None)
            self.view.checkpoints.discard(cid)
        self._newest_first = None

    def branch_created(self, event: BranchCreated) -> None:
        self.branches[event.name] = Branch(parent=event.parent, checkpoint=event.checkpoint, fork_step=event.step,
                                           created_at=time.time())
        self.view.branches.add(event.name)
        if self.trackers is not None:
            self.trackers.put(Fork(event.name, event.parent, event.step, event.checkpoint))
        tmp = self.run_dir / "branches.json.tmp"
        tmp.write_text(json.dumps(self.list_branches(), indent=1))
        tmp.replace(self.run_dir / "branches.json")

    def weights_published(self, version: WeightVersion) -> None:
        """The trainer put a version of its weights in the object store (``version.ref``)."""
        entry = self.weight_registry.add(version)
        self.fleet.rollout.published(entry.version)
        self.weight_registry.keep_also(self.fleet.rollout.keep())
        with open(self.run_dir / "weights.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry.to_dict()) + "\n")

    def replica_report(self, report: ReplicaReport) -> ReplicaOrders:
        """A deployed replica says which version it serves; the answer says which it should."""
        return self.fleet.report(report)

    def replicas(self) -> list[dict[str, Any]]:
        return self.fleet.view()

    def rollout(self) -> dict[str, Any]:
        """The guarded rollout: stable and canary versions, figures, decisions; and the replicas."""
        return {**self.fleet.rollout.view(), "replicas": self.fleet.view()}

    def weights(self, version: int | None = None) -> WeightVersion | None:
        """The latest version (None if none yet) or ``version`` (``ValueError`` naming the
        available ones if it is not kept), with its ``ref``."""
        return self.weight_registry.latest() if version is None else self.weight_registry.get(version)

    def weight_versions(self) -> list[dict[str, Any]]:
        return self.weight_registry.versions()

    def next_weight_version(self) -> int:
        return self.weight_registry.next_version

    def mark_failed(self, message: str) -> None:
        """The trainer died without saying so (its process is gone)."""
        self._update_status(self.trainer_status.model_copy(
            update={"status": RunStatus.FAILED, "message": message, "time": time.time()}))
        self.flush()

    def stall_after(self) -> float:
        """Seconds without a step after which a running run is stalled: ``stall_after_s``,
        or by default a bound on the run's own pace (:func:`~ray_interactive.core.stalls.stall_bound`)."""
        if self.config.stall_after_s is not None:
            return self.config.stall_after_s
        return stall_bound(self.pace.step_time(), busy=self.trainer_status.busy is not None)

    def stalled_for(self) -> float | None:
        """Seconds since the step last moved, if the run says ``running`` and that is longer
        than :meth:`stall_after` (a hung or stopped trainer process); else None."""
        if self.trainer_status.status is not RunStatus.RUNNING or self.recovery is not None:
            return None
        idle = self.pace.idle()
        return idle if idle >= self.stall_after() else None

    # -- queries (JSON views) ----------------------------------------------------------
    def status(self) -> dict[str, Any]:
        counts = {k: v for k, v in self._counts.items() if v}
        trainer = self.trainer_status.model_dump(mode="json")
        if self.recovery is not None:
            trainer.update(status="recovering", samples_per_s=0.0, message=self.recovery.describe())
        elif self.needs_description and not self.trainer_status.status.is_final:
            # Restarted under a live loop: until it describes itself again, commands that need
            # its settings are refused. Saying "running" then would be a lie.
            trainer.update(status="recovering", message=(
                "recovering: the controller was restarted and waits for the training loop to describe itself "
                f"again (it was {self.trainer_status.status.value} at step {self.trainer_status.step})"))
        elif (idle := self.stalled_for()) is not None:
            busy = self.trainer_status.busy
            pace = self.pace.step_time()
            trainer.update(status="stalled", samples_per_s=0.0, message=(
                f"no step has completed for {idle:.0f} s (last: step {self.pace.step}"
                + (f", {busy}" if busy else f"; steps took {pace:.3g} s" if pace is not None else "")
                + "); the trainer may be hung or its process stopped"))
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

    def snapshot_view(self) -> dict[str, Any]:
        """The trainer's latest description ({} before it has described itself)."""
        return self.snapshot.model_dump(mode="json") if self.snapshot is not None else {}

    def lineage(self, branch: str) -> list[tuple[str, int | None]]:
        """``[(root, fork_step), ..., (branch, None)]``: whose metrics a branch continues."""
        chain: list[tuple[str, int | None]] = [(branch, None)]
        seen = {branch}
        while (b := self.branches.get(chain[0][0])) is not None and (parent := b.parent) and parent not in seen:
            seen.add(parent)
            chain.insert(0, (parent, b.fork_step))
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
        branch = branch or self.trainer_status.branch
        if branch not in self.branches and branch not in self.metrics.series:
            raise ValueError(f"no branch {branch!r}; branches: {', '.join(sorted(self.branches))}")
        lineage = self.lineage(branch) if include_ancestors else [(branch, None)]
        return self.metrics.query(lineage, keys, since, max_points, until)

    def metric_keys(self, branch: str | None = None) -> list[str]:
        return self.metrics.keys(branch or self.trainer_status.branch)

    def list_checkpoints(self) -> list[dict[str, Any]]:
        return [c.to_dict() for c in sorted(self.checkpoints.values(), key=lambda c: c.created_at)]

    def _sorted_checkpoints(self) -> list[CheckpointInfo]:
        """Newest first; sorted once per change, not per page (a long run lists thousands)."""
        if self._newest_first is None:
            self._newest_first = sorted(self.checkpoints.values(), key=lambda c: c.created_at, reverse=True)
        return self._newest_first

    def checkpoint_page(self, offset: int = 0, limit: int = 50, branch: str | None = None) -> dict[str, Any]:
        """One page of the checkpoints, newest first (optionally of one branch):
        ``{"total": n, "offset": offset, "rows": [...]}``."""
        rows = self._sorted_checkpoints()
        if branch:
            rows = [c for c in rows if c.branch == branch]
        limit = max(1, min(int(limit), 500))
        offset = max(0, int(offset))
        if offset >= len(rows):  # past the end: the last page
            offset = max(0, (len(rows) - 1) // limit * limit)
        return {"total": len(rows), "offset": offset, "rows": [c.to_dict() for c in rows[offset : offset + limit]]}

    def dashboard(
        self,
        keys: list[str],
        since: int | None = None,
        until: int | None = None,
        max_points: int | None = None,
        history: int = 50,
        max_branches: int | None = 12,
        latest_keys: tuple[str, ...] = ("loss", "eval/loss", "lr"),
        branches: list[str] | None = None,
    ) -> dict[str, Any]:
        """Everything a dashboard refresh shows, in one call: status, branches, the thinned
        metric series of the branches it draws (:meth:`plotted_branches`), every branch's
        newest ``latest_keys`` (``[step, value]``), the newest commands, settings and data
        figures. A run an agent explores has hundreds of branches: drawing them all cost
        ~14 µs a branch here and a plot no one can read in the browser. ``branches``: ones
        a person picked to draw as well (unknown names are left out)."""
        plotted = self.plotted_branches(max_branches, branches or [])
        return {
            "status": self.status(),
            "branches": self.list_branches(),
            "metrics": {b: self.metrics.query([(b, None)], keys, since, max_points, until) for b in plotted},
            "latest": {b: {k: v for k in latest_keys if (v := self.metrics.last_finite(b, k)) is not None}
                       for b in self.branches},
            "history": self.commands(limit=history, newest_first=True),
            "snapshot": self.snapshot_view(),
            "data": self.data_status(),
            "metric_keys": self.metric_keys(),
            "eval_every": self.config.eval_every,  # when the next evaluation is due (None: only on request)
            "rollout": self.rollout(),  # the deployed replicas and the guarded rollout
        }

    def plotted_branches(self, limit: int | None, picked: list[str] | tuple[str, ...] = ()) -> list[str]:
        """The branches a dashboard draws: the current branch and its ancestors and the
        ``picked`` ones (all of them, whatever ``limit``), then the newest others up to
        ``limit`` (None: all)."""
        if limit is None or len(self.branches) <= limit:
            return list(self.branches)
        own = [b for b, _ in self.lineage(self.trainer_status.branch) if b in self.branches]
        own += [b for b in dict.fromkeys(picked) if b in self.branches and b not in own]
        others = sorted((b for b in self.branches if b not in own), key=lambda b: self.branches[b].created_at)
        keep = limit - len(own)
        return own + others[-keep:] if keep > 0 else own

    def list_branches(self) -> dict[str, dict[str, Any]]:
        return {name: b.model_dump(mode="json") for name, b in self.branches.items()}

    # -- persistence -------------------------------------------------------------------
    def maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.config.metrics_flush_s:
            self.flush()
        elif self.trainer_status.step != self._saved_step and not self.storage_error and not self.read_only:
            # One small file per report that moved the step: a run whose process dies now
            # still shows the step it reached. (Metrics wait for the flush.)
            try:
                self._save_status()
            except OSError:
                pass  # the next flush says so

    def _save_status(self) -> None:
        tmp = self.run_dir / "status.json.tmp"
        try:
            tmp.write_text(json.dumps({**self.status(), "saved_at": time.time()}, default=str))
            tmp.replace(self.run_dir / "status.json")
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        self._saved_step = self.trainer_status.step

    def flush(self) -> None:
        """Write metrics not yet on disk, and the status (what a finished run shows)."""
        if self.read_only:
            return
        self._last_flush = time.monotonic()
        try:
            if self.write_part is None:
                self.metrics.flush(self.run_dir / "metrics")
            elif (part := self.metrics.take(self.run_dir / "metrics")) is not None:
                self.write_part(part)
            self._save_status()
            self.storage_error = self.part_error
        except OSError as e:  # a full disk: metrics stay in memory and are written at the next flush
            self.storage_error = f"metrics and status could not be written: {e}"
            log.error(self.storage_error)
        if self.trackers is not None:
            self._tracker_errors()

    def close(self) -> None:
        self.flush()
        if self.trackers is not None:
            self.trackers.close(timeout=20.0)  # within the 30 s a run's owner gives close()
            self._tracker_errors()
        if self._log is not None:
            self._log.close()

    def _tracker_errors(self) -> None:
        """A tracker that failed says so in the run's history (once per tracker)."""
        assert self.trackers is not None
        st = self.trainer_status
        for message in self.trackers.take_errors():
            self.system_event(RunEvent(kind="tracker_error", message=message, step=st.step, branch=st.branch,
                                       failed=True))

    def _recover(self) -> None:
        """Rebuild state from the run directory (a resumed run, a restarted actor)."""
        for key, r in read_command_log(self.run_dir / "commands.jsonl").items():
            self._keep(r, key)
        seqs = [r.seq for r in self.records.values() if r.seq is not None]
        self.next_seq = max(seqs, default=0) + 1
        for info in list_checkpoints(self.run_dir / "checkpoints"):
            self.checkpoint_saved(info)
        branches = self.run_dir / "branches.json"
        if branches.exists():
            for name, doc in json.loads(branches.read_text()).items():
                self.branches[name] = Branch.model_validate(doc)
            self.view.branches |= set(self.branches)
        self.metrics = MetricStore.load(self.run_dir / "metrics")
        # The weights died with the old trainer; their numbers are not reused.
        self.weight_registry.next_version = last_weight_version(self.run_dir / "weights.jsonl") + 1
        # The rollout's decisions, from the log (a canary being judged is lost: the next
        # published version is the next canary).
        rollout = self.fleet.rollout
        published = set(range(1, self.weight_registry.next_version))
        for r in sorted(self.records.values(), key=lambda r: r.applied_at or 0.0):
            if r.status is CommandStatus.APPLIED and r.command is not None and r.command.in_controller:
                if r.command.kind in ("promote_version", "rollback_version"):
                    rollout.canary = getattr(r.command, "version", None) or rollout.canary
                try:
                    r.command.apply_rollout(rollout, published)
                except ValueError:
                    pass
        rollout.canary = None
        rollout.newest = self.weight_registry.next_version - 1


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
