"""The client: how any process (UI, agent, demo, script, CLI) talks to a running run.

    import ray_interactive as ri
    run = ri.connect("my-run")
    rec = run.send("update_optimizer", params={"lr": 1e-4})
    print(rec.status, rec.message)            # accepted / rejected with the reason
    rec = run.wait(rec)                       # applied at step N (or failed)
    run.metrics(keys=["loss"], max_points=500)

    sub = run.subscribe(model).start()        # a deployed model follows the published weights
    with sub.lock:
        y = model(x)
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import ray
from pydantic import BaseModel

from ray_interactive.core.commands import CommandRecord, CommandSource, CommandStatus, check_payload_shape, loggable
from ray_interactive.core.config import DEFAULT_NAMESPACE, actor_name
from ray_interactive.core.plain import clip, names, one_of, seconds, shown, whole
from ray_interactive.core.retry import call_with_retry
from ray_interactive.core.weights import WeightVersion, load_version, unpack_state
from ray_interactive.data.coalesce import IngestCoalescer, SourceSpec
from ray_interactive.data.schemas import check_unique_columns
from ray_interactive.data.shards import shard_of
from ray_interactive.runtime.connection import init_ray
from ray_interactive.runtime.lifecycle import actor_restarting, buffer_shards
from ray_interactive.serve.ingest_client import check_ingest_args

if TYPE_CHECKING:  # a client that never fetches weights (the CLI) needs no torch
    import torch

log = logging.getLogger(__name__)


class RunNotFound(LookupError):
    """No run with that name is running in the namespace."""


class CommandNotFound(KeyError):
    """No command with that id in the run's log."""

    def __str__(self) -> str:  # KeyError's own puts the message in quotes
        return str(self.args[0])


def _text(value: Any, what: str) -> str | None:
    """An optional name a caller gave, checked here: an actor would answer a wrong type
    with a traceback."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what} must be a name (text), got {shown(value)}")
    return value


def list_runs(namespace: str = DEFAULT_NAMESPACE) -> list[str]:
    """Names of the runs whose controllers are alive in ``namespace``."""
    actors = ray.util.list_named_actors(all_namespaces=True)
    return sorted(
        a["name"].removesuffix(".controller")
        for a in actors
        if a["namespace"] == namespace and a["name"].endswith(".controller")
    )


def connect(run: str, address: str | None = None, namespace: str = DEFAULT_NAMESPACE, quiet: bool = False) -> RunClient:
    """Attach to the run named ``run`` (connecting to Ray first if needed).

    ``address`` defaults to RAY_ADDRESS, else ``"auto"`` (a cluster started on this machine);
    ``quiet``: Ray prints nothing while connecting (a CLI that prints only its answer).
    """
    if not isinstance(run, str) or not isinstance(namespace, str) or not namespace:  # Ray's own errors say "Pass None"
        raise ValueError(f"connect takes a run's name and a namespace (non-empty text), got {shown(run)}, {shown(namespace)}")
    if not ray.is_initialized():
        init_ray(address, namespace=namespace, default="auto", quiet=quiet)
    try:
        controller = ray.get_actor(actor_name(run, "controller"), namespace=namespace)
    except ValueError:
        running = list_runs(namespace)
        hint = f"running: {', '.join(running)}" if running else "no run is running"
        raise RunNotFound(f"no run named {clip(run, 80)!r} in namespace {clip(namespace, 80)!r} ({hint})") from None
    return RunClient(run, namespace, controller)


class RunClient:
    """Commands, queries and data ingestion for one run."""

    def __init__(self, run: str, namespace: str, controller: Any) -> None:
        self.run = run
        self.namespace = namespace
        self._controller = controller
        self._buffer: Any = None
        self._shards: list[Any] | None = None  # the buffer's shards, the primary first (asked once)

    # -- commands ----------------------------------------------------------------------
    def submit(self, command: Any, source: str | None = None) -> CommandRecord:
        """Submit a command (a model from :mod:`ray_interactive.core.commands`, a dict or JSON).

        Returns the record at once: ``accepted`` with its sequence number, or
        ``rejected`` with the reason. Invalid input never raises here.
        """
        # A payload too deep or large to be worth sending, or that Ray could not even serialise
        # (a lock in it), is refused here, and logged by the controller as a clipped copy.
        try:
            if source is not None:
                one_of(CommandSource, source, "source")
            if not isinstance(command, BaseModel):
                check_payload_shape(command)
        except ValueError as e:
            return ray.get(self._controller.refuse.remote(loggable(command), str(e)))
        if isinstance(command, dict) and "id" not in command:
            # Named here, so that Ray's retry of this call across a controller restart
            # is answered from the log instead of queued twice.
            command = {**command, "id": uuid.uuid4().hex}
        return ray.get(self._controller.submit.remote(command, source))

    def send(self, kind: str, source: str | None = None, **fields: Any) -> CommandRecord:
        """``send("update_optimizer", params={"lr": 1e-4})``: build and submit a command."""
        return self.submit({"kind": kind, **fields}, source=source)

    def wait(self, command: CommandRecord | str, timeout: float = 60.0) -> CommandRecord:
        """Wait until a command is applied, failed or rejected; raises ``TimeoutError``."""
        if isinstance(command, CommandRecord):
            cid = command.id
        elif isinstance(command, str):
            cid = command
        else:
            raise TypeError(f"wait takes a command's record (what send returns) or its id, not {shown(command)}")
        if cid is None:
            raise ValueError("that record has no id (its payload was not a command)")
        deadline = time.monotonic() + seconds(timeout, "timeout")
        while True:
            left = deadline - time.monotonic()
            rec = ray.get(self._controller.wait_command.remote(cid, max(0.0, min(left, 30.0))))
            if rec is None:
                raise CommandNotFound(f"no command with id {clip(cid, 80)!r}")
            if rec.status is not CommandStatus.ACCEPTED:
                return rec
            if left <= 0:
                raise TimeoutError(f"command {cid} was not applied within {timeout:g}s (status: {rec.status.value})")

    def command(self, command_id: str) -> CommandRecord | None:
        return ray.get(self._controller.get_command.remote(command_id))

    def commands(self, limit: int | None = None, newest_first: bool = False) -> list[dict[str, Any]]:
        """The command log as flat dicts."""
        limit = whole(limit, "limit")
        return ray.get(self._controller.commands.remote(limit, newest_first))

    def stop(self, wait: bool = True, timeout: float = 120.0) -> CommandRecord:
        """Ask the run to stop (final checkpoint); optionally wait until it has."""
        rec = self.send("stop")
        if wait and rec.status is CommandStatus.ACCEPTED:
            try:
                rec = self.wait(rec, timeout)
                deadline = time.monotonic() + timeout
                while self.status()["status"] not in ("stopped", "failed") and time.monotonic() < deadline:
                    time.sleep(0.1)
            except ray.exceptions.RayActorError:
                # The process that owns a run shuts its actors down once the run has stopped
                # (a job's driver, `ray-interactive run`): the controller gone is the end.
                log.info("run %s: its controller was shut down after the stop", self.run)
        return rec

    # -- queries -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Run status: starting / running / waiting (for data) / paused / stopping / stopped /
        failed, step, branch, a message saying why it is paused or waiting, ..."""
        return ray.get(self._controller.status.remote())

    def metrics(
        self,
        keys: list[str] | None = None,
        branch: str | None = None,
        since: int | None = None,
        max_points: int | None = None,
        include_ancestors: bool = False,
        until: int | None = None,
    ) -> dict[str, dict[str, list[Any]]]:
        """``{key: {"step": [...], "time": [...], "value": [...]}}`` of one branch, steps
        ``since..until``, thinned to ``max_points`` (min/max per bucket) if given."""
        query = {
            "branch": _text(branch, "branch"), "keys": names(keys, "keys"), "since": whole(since, "since", None),
            "max_points": whole(max_points, "max_points", minimum=3), "include_ancestors": include_ancestors,
            "until": whole(until, "until", None),
        }
        return ray.get(self._controller.metrics.remote(**query))

    def metric_keys(self, branch: str | None = None) -> list[str]:
        branch = _text(branch, "branch")
        return ray.get(self._controller.metric_keys.remote(branch))

    def checkpoints(self) -> list[dict[str, Any]]:
        return ray.get(self._controller.checkpoints.remote())

    def checkpoint_page(self, offset: int = 0, limit: int = 50, branch: str | None = None) -> dict[str, Any]:
        """A page of the checkpoints, newest first: ``{"total", "offset", "rows"}``."""
        query = (whole(offset, "offset", None), whole(limit, "limit", None), _text(branch, "branch"))  # clamped there
        return ray.get(self._controller.checkpoint_page.remote(*query))

    def dashboard(
        self, keys: list[str], since: int | None = None, until: int | None = None,
        max_points: int | None = None, history: int = 50, max_branches: int | None = 12,
        branches: list[str] | None = None,
    ) -> dict[str, Any]:
        """What a dashboard refresh shows in one round trip: status, branches, the thinned
        series of ``keys`` of the current branch's line and the newest others up to
        ``max_branches`` (None: all) and any ``branches`` named, every branch's latest loss
        and lr, the newest commands, settings and data figures."""
        query = {
            "keys": names(keys, "keys"), "since": whole(since, "since", None), "until": whole(until, "until", None),
            "max_points": whole(max_points, "max_points", minimum=3), "history": whole(history, "history"),
            "max_branches": whole(max_branches, "max_branches", minimum=1),
            "branches": names(branches or [], "branches"),
        }
        return ray.get(self._controller.dashboard.remote(**query))

    def branches(self) -> dict[str, dict[str, Any]]:
        return ray.get(self._controller.branches.remote())

    def snapshot(self) -> dict[str, Any]:
        """The trainer's last self-description: param groups, modules, schedule, ..."""
        return ray.get(self._controller.snapshot.remote())

    # -- data --------------------------------------------------------------------------
    def _buffer_handle(self) -> Any:
        if self._buffer is None:
            self._buffer = ray.get_actor(actor_name(self.run, "buffer"), namespace=self.namespace)
        return self._buffer

    def _ingest_handle(self, batch_id: str) -> Any:
        """The buffer shard that stores ``batch_id`` (a pure function of it, so a retry
        reaches the shard that has the first copy)."""
        if self._shards is None:
            self._shards = buffer_shards(self.run, self.namespace, self._buffer_handle())
        return self._shards[shard_of(batch_id, len(self._shards))]

    def ingest(
        self,
        table: pa.Table | pa.RecordBatch,
        source: str,
        batch_id: str | None = None,
        timeout: float = 120.0,
    ) -> dict[str, Any]:
        """Add rows to a live source; returns the acknowledgement once they are on disk.

        The table goes by value (the buffer owns it). ``ValueError`` with the reason if it
        does not fit the source's schema. If the buffer actor is restarting, the call is
        retried with the same ``batch_id`` (one is made up if not given) until ``timeout``:
        rows acknowledged once are never stored twice.
        """
        # Refused here, before Ray tries to serialise it: a dict holding a lock would come
        # back as Ray's "Could not serialize ...", a duplicate column name cannot be sent at all.
        check_ingest_args(table, source, batch_id)
        check_unique_columns(table.column_names, f"source {clip(source, 80)!r}")
        seconds(timeout, "timeout")
        batch_id = batch_id or uuid.uuid4().hex

        def once() -> dict[str, Any]:
            try:
                return ray.get(self._ingest_handle(batch_id).ingest.remote(table, source, batch_id))
            except ray.exceptions.RayTaskError as e:
                # The buffer's own sentence (which column, why; a full disk), not Ray's traceback.
                if isinstance(e.cause, ValueError):
                    raise ValueError(str(e.cause)) from None
                if isinstance(e.cause, OSError):
                    raise OSError(str(e.cause)) from None
                raise

        return call_with_retry(once, f"ingest into {source!r} (batch {batch_id})", deadline_s=timeout,
                               on=actor_restarting, base_delay=0.2, max_delay=1.0, logger=log)

    def ingest_log(self, **options: Any) -> IngestCoalescer:
        """An ingest client for many small tables (a deployed model logging each interaction):
        ``log.add(table, source)`` returns a future that resolves with the rows'
        acknowledgement once they are durable; what is added is sent as one large ingest per
        source (``max_rows``, ``max_bytes``, ``max_delay_s``), from a thread, retried with the
        same batch_id while the buffer restarts. Close it (or use ``with``) to send the rest.
        See :class:`~ray_interactive.data.coalesce.IngestCoalescer` for the options."""
        return IngestCoalescer(self._send_to_buffer, self._source_spec, name=f"{self.run}-ingest", **options)

    def _source_spec(self, source: str) -> SourceSpec:
        return call_with_retry(lambda: self._buffer_call(lambda b: b.source_spec.remote(source)),
                               f"schema of {source!r}", deadline_s=60.0, on=actor_restarting, logger=log)

    def _send_to_buffer(self, table: pa.Table, source: str, batch_id: str) -> dict[str, Any]:
        # One attempt: the coalescer retries what raises anything but ValueError.
        return self._buffer_call(lambda b: b.ingest.remote(table, source, batch_id), self._ingest_handle(batch_id))

    def _buffer_call(self, call: Callable[[Any], Any], handle: Any = None) -> Any:
        try:
            return ray.get(call(handle or self._buffer_handle()))
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, ValueError):  # the buffer's own sentence, not Ray's traceback
                raise ValueError(str(e.cause)) from None
            raise

    def read_rows(self, source: str, start: int = 0, stop: int | None = None, columns: list[str] | None = None) -> pa.Table:
        """Stored rows of a source in ingest order (sequence numbers ``start..stop-1``)."""
        query = (_text(source, "source"), whole(start, "start"), whole(stop, "stop"), names(columns, "columns"))
        try:
            return ray.get(self._buffer_handle().read.remote(*query))
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, ValueError):
                raise ValueError(str(e.cause)) from None
            raise

    def data_status(self) -> dict[str, Any]:
        """The buffer's latest figures (rows, bytes, ingest rate per source; rejections)."""
        return ray.get(self._controller.data_status.remote())

    def sources(self) -> dict[str, Any]:
        return ray.get(self._buffer_handle().sources.remote())

    # -- published weights -------------------------------------------------------------
    def replicas(self) -> list[dict[str, Any]]:
        """The deployed replicas of the run's model: name, version served, alive, figures."""
        return ray.get(self._controller.replicas.remote())

    def rollout(self) -> dict[str, Any]:
        """The guarded rollout: ``stable``, ``canary``, ``pinned`` versions, the judge's
        ``figures`` per version, the ``decisions``, and the ``replicas``."""
        return ray.get(self._controller.rollout.remote())

    def weight_versions(self) -> list[dict[str, Any]]:
        """Metadata of the weight versions the run keeps, oldest first."""
        return ray.get(self._controller.weight_versions.remote())

    def weight_version(self, version: int | None = None) -> WeightVersion | None:
        """The latest version (None if none yet) or ``version`` (``ValueError`` naming the
        kept ones if it is not kept): metadata, with its ObjectRef in ``.ref``. No weights move."""
        version = whole(version, "version")
        try:
            found = ray.get(self._controller.weights.remote(version))
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, ValueError):
                raise ValueError(str(e.cause)) from None
            raise
        return found

    def _wait_weights_call(self, after: int | None, timeout: float) -> Any:
        return self._controller.wait_weights.remote(after, timeout)

    def wait_weight_version(self, after: int | None = None, timeout: float = 30.0) -> WeightVersion | None:
        """Wait until a version newer than ``after`` (any, for None) is published; the latest
        then, or None after ``timeout`` s."""
        deadline = time.monotonic() + seconds(timeout, "timeout")
        while True:
            left = deadline - time.monotonic()
            t0 = time.monotonic()
            found = ray.get(self._wait_weights_call(after, max(0.0, min(left, 30.0))))
            if found is not None:
                return found
            if left <= 0:
                return None
            if time.monotonic() - t0 < min(left, 30.0) / 2:  # the controller has too many waiters: poll
                time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))

    def fetch_weights(self, entry: WeightVersion) -> dict[str, torch.Tensor]:
        """The state dict of a version (zero-copy, read-only views of the object store)."""
        try:
            packed = ray.get(entry.ref)
        except ray.exceptions.ObjectLostError:
            raise LookupError(
                f"weights version {entry.version} are no longer available: the trainer that published them has ended"
            ) from None
        return unpack_state(packed)

    def latest_weights(
        self, after: int | None = None, timeout: float | None = None
    ) -> tuple[WeightVersion, dict[str, torch.Tensor]] | None:
        """``(version, state_dict)`` of the newest version, if newer than ``after``; with a
        ``timeout``, wait that long for one. None if there is none (yet).

        ``model.load_state_dict(state)`` loads it (the tensors are read-only views of the
        object store: clone one before changing it).
        """
        entry = self.wait_weight_version(after, timeout) if timeout else self.weight_version()
        if entry is None or (after is not None and entry.version <= after):
            return None
        return entry, self.fetch_weights(entry)

    def weights(self, version: int) -> tuple[WeightVersion, dict[str, torch.Tensor]]:
        """``(version, state_dict)`` of one kept version (``ValueError`` if not kept)."""
        entry = self.weight_version(version)
        assert entry is not None
        return entry, self.fetch_weights(entry)

    def subscribe(
        self,
        module: torch.nn.Module,
        pin: int | None = None,
        on_swap: Callable[[WeightVersion], Any] | None = None,
        strict: bool = True,
    ) -> WeightSubscriber:
        """A :class:`WeightSubscriber` that keeps ``module`` on the run's published weights."""
        return WeightSubscriber(self, module, pin=pin, on_swap=on_swap, strict=strict)


class WeightSubscriber:
    """Keeps a module on a run's published weights: follows the latest, or is pinned.

    ``refresh()`` loads the newest version (when following) or the pinned one;
    ``start()`` does that in a background thread as soon as a version appears. Weights
    are swapped with ``module.load_state_dict`` while holding :attr:`lock`, so inference
    that holds the lock never sees half a swap::

        sub = run.subscribe(model).start()
        with sub.lock:
            y = model(x)

    ``pin(v)`` loads version ``v`` and stays there; ``follow()`` goes back to the latest;
    ``rollback()`` pins the version loaded before the current one. The subscriber keeps
    the references of the loaded and the previous version, so both stay loadable even
    after the run stops keeping them (while the trainer that published them lives).
    ``on_swap(version)`` is called after each swap, from the thread that made it.
    """

    def __init__(
        self,
        client: RunClient,
        module: torch.nn.Module,
        pin: int | None = None,
        on_swap: Callable[[WeightVersion], Any] | None = None,
        strict: bool = True,
        wait_s: float = 10.0,
    ) -> None:
        self.client = client
        self.module = module
        self.on_swap = on_swap
        self.strict = strict
        self.wait_s = wait_s
        self.lock = threading.RLock()  # held while the weights are swapped; hold it for inference
        self._ops = threading.RLock()  # one refresh / pin / rollback / background load at a time
        self._pin = pin
        self.loaded: WeightVersion | None = None
        self.previous: WeightVersion | None = None
        self.last_swap: dict[str, float] = {}  # times of the last swap (seen, fetched, loaded)
        #: called with each version's state just before it is loaded (a replica keeps what it overwrites)
        self.before_load: Callable[[Mapping[str, Any]], Any] | None = None
        self.last_error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if pin is not None:
            self.pin(pin)

    @property
    def pinned(self) -> int | None:
        return self._pin

    def _known(self, version: int) -> WeightVersion | None:
        for entry in (self.loaded, self.previous):
            if entry is not None and entry.version == version:
                return entry
        return None

    def _load(self, entry: WeightVersion) -> WeightVersion:
        seen = time.time()
        state = self.client.fetch_weights(entry)
        fetched = time.time()
        with self.lock:
            if self.before_load is not None:
                self.before_load(state)
            load_version(self.module, state, entry, strict=self.strict)
            if self.loaded is not None and self.loaded.version != entry.version:
                self.previous = self.loaded
            self.loaded = entry
        del state
        self.last_swap = {"version": entry.version, "seen_at": seen, "fetched_at": fetched, "loaded_at": time.time()}
        if self.on_swap is not None:
            self.on_swap(entry)
        return entry

    def refresh(self) -> WeightVersion | None:
        """Load the newest version if following and it is newer than the loaded one, or the
        pinned version if it is not loaded; return what was loaded (None: nothing new)."""
        with self._ops:
            if self._pin is not None:
                if self.loaded is not None and self.loaded.version == self._pin:
                    return None
                entry = self._known(self._pin) or self.client.weight_version(self._pin)
            else:
                entry = self.client.weight_version()
                if entry is None or (self.loaded is not None and entry.version <= self.loaded.version):
                    return None
            assert entry is not None
            return self._load(entry)

    def pin(self, version: int) -> WeightVersion:
        """Load ``version`` (if it is not loaded) and stay on it."""
        with self._ops:
            entry = self._known(version) or self.client.weight_version(version)
            assert entry is not None
            self._pin = version
            if self.loaded is None or self.loaded.version != version:
                self._load(entry)
            return entry

    def follow(self) -> WeightVersion | None:
        """Unpin: load the latest version now (and follow new ones if started)."""
        with self._ops:
            self._pin = None
            self.refresh()
            return self.loaded

    def rollback(self) -> WeightVersion:
        """Back to the version loaded before the current one, pinned there."""
        with self._ops:
            if self.previous is None:
                raise ValueError("nothing to roll back to: only one version has been loaded")
            return self.pin(self.previous.version)

    # -- background ----------------------------------------------------------------------
    def start(self) -> WeightSubscriber:
        """Follow new versions in a background thread (loads the latest first)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="weight-subscriber", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> WeightSubscriber:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _loop(self) -> None:
        pending: Any = None  # an outstanding wait_weights call
        sent = 0.0
        while not self._stop.is_set():
            try:
                if self._pin is not None:
                    pending = None
                    self._stop.wait(0.2)
                    continue
                if pending is None:
                    after = self.loaded.version if self.loaded is not None else None
                    pending, sent = self.client._wait_weights_call(after, self.wait_s), time.monotonic()
                ready, _ = ray.wait([pending], timeout=0.2)  # short, so stop() is quick
                if not ready:
                    continue
                found, pending = ray.get(pending), None
                if found is None:
                    if time.monotonic() - sent < self.wait_s / 2:  # the controller has too many waiters: poll
                        self._stop.wait(0.25)
                    continue
                entry = found
                with self._ops:
                    newer = self.loaded is None or entry.version > self.loaded.version
                    if self._pin is None and newer:
                        self._load(entry)
                self.last_error = None
            except Exception as e:  # the run may be gone, or a version lost: keep trying
                if not isinstance(e, type(self.last_error)):
                    log.warning("weight subscriber: %s", e)
                self.last_error, pending = e, None
                self._stop.wait(1.0)
