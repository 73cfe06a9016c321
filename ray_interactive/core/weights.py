"""Weights published by the trainer, for deployed models to load while the run trains.

The trainer takes one CPU copy of its ``state_dict`` at a step boundary
(:func:`pack_state`: numpy arrays, which the Ray object store serves back zero-copy), and
a background thread puts it in the object store and tells the controller
(:class:`BackgroundPublisher`), so the step loop is held only for the copy. The
controller keeps the last few versions in a :class:`WeightRegistry`; a subscriber
(:class:`ray_interactive.runtime.client.WeightSubscriber`) loads one with
``module.load_state_dict(unpack_state(packed))``.

Everything here is plain Python: no Ray, no actors. ``BackgroundPublisher`` is given
``put`` and ``report`` callables (``ray.put`` and the controller's method under Ray).
A version crosses to the controller as a :class:`WeightVersion` whose ``ref`` is the
object store's reference (nested in it, so Ray passes the reference, not the weights).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are packed: the controller keeps versions only
    import torch

log = logging.getLogger(__name__)


@functools.cache
def _dtypes() -> tuple[frozenset[Any], dict[int, Any]]:
    """Torch dtypes that ``Tensor.numpy()`` supports (others travel as a same-width integer
    view), and the integer dtype of each width."""
    import torch

    numpy_dtypes = frozenset({
        torch.float16, torch.float32, torch.float64, torch.complex64, torch.complex128, torch.bool,
        torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64,
    })
    return numpy_dtypes, {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass
class PackedState:
    """A ``state_dict`` as CPU numpy arrays: what goes into the object store.

    ``dtypes`` names the torch dtype of arrays stored as an integer view (bfloat16,
    float8, ...); ``aliases`` maps a tied entry to the entry holding its data; ``extras``
    holds non-tensor entries (``_extra_state``) as they are.
    """

    arrays: dict[str, np.ndarray]
    dtypes: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    @property
    def num_params(self) -> int:
        """Elements of all tensors (parameters and buffers), tied ones counted once."""
        return sum(a.size for a in self.arrays.values())


def _cpu_copy(t: torch.Tensor) -> torch.Tensor:
    """One contiguous CPU copy (device -> host, or a clone of a CPU tensor)."""
    import torch

    t = t.detach()
    if t.device.type == "cpu":
        return t.clone(memory_format=torch.contiguous_format)
    return t.to("cpu").contiguous()  # a new tensor already: no second copy


def pack_state(module_or_state: torch.nn.Module | Mapping[str, Any], views: bool = False) -> PackedState:
    """A CPU copy of every tensor of ``module.state_dict()`` (or of a state dict) as numpy.

    One copy per tensor; tied weights (one tensor under two names) are copied once.
    ``views``: contiguous CPU tensors are not copied but viewed (for a publisher that
    copies them itself: :meth:`ViewPublisher.publish_views`).
    """
    import torch

    numpy_dtypes, int_of_width = _dtypes()
    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    packed = PackedState(arrays={})
    seen: dict[tuple[Any, ...], str] = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            packed.extras[name] = value
            continue
        key = (value.device, value.untyped_storage().data_ptr(), value.storage_offset(), value.dtype,
               tuple(value.shape), tuple(value.stride()))
        if value.numel() > 0 and key in seen:
            packed.aliases[name] = seen[key]
            continue
        seen[key] = name
        t = value.detach() if views and value.device.type == "cpu" and value.is_contiguous() else _cpu_copy(value)
        if t.dtype not in numpy_dtypes:
            packed.dtypes[name] = str(t.dtype).removeprefix("torch.")
            t = t.view(int_of_width[t.element_size()])
        packed.arrays[name] = t.numpy()
    return packed


def trainable_state_names(module: torch.nn.Module) -> set[str]:
    """The state dict entries that a run with ``saved_weights="trainable"`` saves and
    publishes: the parameters trainable now and the persistent buffers (a norm's running
    statistics change in training too). Every other entry is the fixed base."""
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    params = dict(module.named_parameters(remove_duplicate=False))
    names = {n for n, p in params.items() if id(p) in trainable}
    return names | {n for n in module.state_dict(keep_vars=True) if n not in params}


def load_version(module: torch.nn.Module, state: Mapping[str, Any], entry: WeightVersion | None = None,
                 strict: bool = True) -> None:
    """Load a published version's state into ``module``. A partial version (only what
    trains, ``saved_weights="trainable"``) loads over the module's own base; a name the
    module lacks is an error either way (the wrong model)."""
    partial = entry is not None and entry.partial
    missing, unexpected = module.load_state_dict(state, strict=strict and not partial)
    if partial and unexpected:
        raise ValueError(f"weights version {entry.version} does not fit this model: it has no "  # type: ignore[union-attr]
                         f"{', '.join(unexpected[:5])}")


def unpack_state(packed: PackedState) -> dict[str, Any]:
    """The state dict of a :class:`PackedState`, for ``module.load_state_dict``.

    The tensors share the arrays' memory: arrays from the object store are read-only
    views of it (``load_state_dict`` copies them; ``clone()`` one before changing it).
    """
    import torch

    out: dict[str, Any] = {}
    with warnings.catch_warnings():  # read-only arrays from the object store: we never write to them
        warnings.filterwarnings("ignore", message=".*not writable.*")
        for name, arr in packed.arrays.items():
            t = torch.from_numpy(arr)
            if name in packed.dtypes:
                t = t.view(getattr(torch, packed.dtypes[name]))
            out[name] = t
    for name, target in packed.aliases.items():
        out[name] = out[target]
    out.update(packed.extras)
    return out


@dataclass
class WeightVersion:
    """One published version of the weights. ``ref`` (the ObjectRef of its
    :class:`PackedState`) is not part of :meth:`to_dict`."""

    version: int  # 0: not numbered yet (the registry numbers it)
    step: int
    branch: str
    time: float  # when the trainer took the copy (wall clock)
    reason: str  # "start" | "periodic" | "command" | "load_checkpoint"
    num_params: int = 0
    nbytes: int = 0
    hold_s: float = 0.0  # how long the step loop was held for it
    published_at: float | None = None  # when it was in the object store
    partial: bool = False  # only the trainable tensors (``saved_weights="trainable"``): load with strict=False
    ref: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "ref"}

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any], ref: Any = None) -> WeightVersion:
        names = {f.name for f in dataclasses.fields(cls)} - {"ref"}
        unknown = sorted(set(meta) - names)
        if unknown:  # a renamed field fails here, not as a missing value in a UI
            raise ValueError(f"unknown weight version field(s) {', '.join(unknown)}")
        return cls(**dict(meta), ref=ref)

    def with_ref(self, ref: Any, **changes: Any) -> WeightVersion:
        """This version pointing at ``ref`` (its packed weights), with ``changes``."""
        return dataclasses.replace(self, ref=ref, **changes)


class WeightRegistry:
    """The last ``keep`` published versions, by number (the controller keeps one).

    Numbers come with the metadata (the trainer assigns them, so a command's message can
    name its version) or are assigned here; either way they only grow. Versions may be
    added out of order (calls to a threaded actor can be reordered): the highest is the
    latest. Dropping an old version drops its ref, so the object store can free it.
    """

    def __init__(self, keep: int = 8, next_version: int = 1) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.keep = keep
        self.next_version = next_version
        self._versions: dict[int, WeightVersion] = {}
        #: versions kept beyond ``keep`` (a guarded rollout's stable and canary: replicas need them)
        self.pinned: set[int] = set()

    def add(self, entry: WeightVersion) -> WeightVersion:
        """Keep ``entry`` (numbered here if its ``version`` is 0); returns it as kept."""
        if not entry.version:
            entry = dataclasses.replace(entry, version=self.next_version)
        if entry.version in self._versions:
            raise ValueError(f"weights version {entry.version} was already published")
        self._versions[entry.version] = entry
        self.next_version = max(self.next_version, entry.version + 1)
        self._trim()
        return entry

    def keep_also(self, versions: set[int]) -> None:
        """Keep ``versions`` beyond the last ``keep`` (dropping what no longer needs to be)."""
        self.pinned = set(versions)
        self._trim()

    def _trim(self) -> None:
        newest = set(sorted(self._versions)[-self.keep:])
        for v in [v for v in self._versions if v not in newest and v not in self.pinned]:
            del self._versions[v]

    def latest(self) -> WeightVersion | None:
        return self._versions[max(self._versions)] if self._versions else None

    def forget(self) -> None:
        """Drop every kept version (their owner, the trainer process, is gone); the numbers
        go on from where they were."""
        self._versions.clear()

    def newer_than(self, version: int | None) -> WeightVersion | None:
        """The latest version if it is newer than ``version`` (any, for None)."""
        latest = self.latest()
        if latest is None or (version is not None and latest.version <= version):
            return None
        return latest

    def get(self, version: int) -> WeightVersion:
        entry = self._versions.get(version)
        if entry is not None:
            return entry
        have = sorted(self._versions)
        available = f"available: {', '.join(map(str, have))}" if have else "none is available"
        if version < self.next_version:
            why = f"it is no longer kept (the run keeps the last {self.keep})"
        else:
            why = "it has not been published yet"
        raise ValueError(f"no weights version {version}: {why}; {available}")

    def versions(self) -> list[dict[str, Any]]:
        """JSON-safe metadata of the kept versions, oldest first."""
        return [self._versions[v].to_dict() for v in sorted(self._versions)]

    def __len__(self) -> int:
        return len(self._versions)


class Publisher(Protocol):
    """Where the trainer hands its packed weights (see :class:`BackgroundPublisher`)."""

    def publish(self, version: WeightVersion, packed: PackedState) -> None: ...

    def flush(self, timeout: float | None = None) -> None: ...


class ViewPublisher(Publisher, Protocol):
    """A publisher that also takes views of live weights (:meth:`publish_views`)."""

    def publish_views(self, version: WeightVersion, packed: PackedState) -> None:
        """``packed`` views the trainer's live weights: keep a copy before returning
        (they change once this returns); the rest may happen later."""
        ...


class LocalPublisher:
    """In-process: versions go straight into a :class:`WeightRegistry` (no Ray; tests)."""

    def __init__(self, registry: WeightRegistry | None = None) -> None:
        self.registry = registry if registry is not None else WeightRegistry()  # an empty one is falsy

    def publish(self, version: WeightVersion, packed: PackedState) -> None:
        self.registry.add(version.with_ref(packed, published_at=time.time()))

    def publish_views(self, version: WeightVersion, packed: PackedState) -> None:
        owned = dataclasses.replace(packed, arrays={k: a.copy() for k, a in packed.arrays.items()})
        self.publish(version, owned)

    def flush(self, timeout: float | None = None) -> None:
        pass


class BackgroundPublisher:
    """Puts packed states in the object store and reports them, on one background thread.

    ``put(packed) -> ref`` (``ray.put``) and ``report(version) -> reply`` (the
    controller's ``weights_published``, given the version with its ``ref``) run off the
    step loop, in publishing order. At most ``max_pending`` copies wait for the thread;
    beyond that :meth:`publish` blocks, so a run that publishes faster than the store
    takes copies slows down instead of filling memory. ``wait(replies)`` (``ray.get``) is
    used by :meth:`flush`.
    """

    def __init__(
        self,
        put: Callable[[PackedState], Any],
        report: Callable[[WeightVersion], Any],
        wait: Callable[[list[Any]], Any] | None = None,
        max_pending: int = 2,
    ) -> None:
        self._put, self._report, self._wait = put, report, wait
        self._room = threading.Semaphore(max_pending)
        self._queue: queue.Queue[tuple[WeightVersion, PackedState | None, Any] | None] = queue.Queue()
        self._replies: list[Any] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="weights-publisher", daemon=True)
        self._thread.start()

    def publish(self, version: WeightVersion, packed: PackedState) -> None:
        """Queue a copy; blocks (and adds the wait to ``hold_s``) while ``max_pending``
        copies are already waiting."""
        t0 = time.perf_counter()
        self._room.acquire()
        version = dataclasses.replace(version, hold_s=version.hold_s + time.perf_counter() - t0)
        self._queue.put((version, packed, None))

    def publish_views(self, version: WeightVersion, packed: PackedState) -> None:
        """Put ``packed`` (views of live weights) in the object store in this thread - the
        only copy the weights take - and report it from the background thread."""
        self._room.acquire()
        try:
            ref = self._put(packed)
        except BaseException:
            self._room.release()
            raise
        self._queue.put((version, None, ref))

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            version, packed, ref = item
            try:
                if ref is None:
                    ref = self._put(packed)
                del packed, item  # the object store has its copy now
                reply = self._report(version.with_ref(ref, published_at=time.time()))
                with self._lock:
                    self._replies = [*self._replies[-15:], reply]
            except Exception:  # a lost version must not take the trainer down
                log.exception("publishing weights version %s failed", version.version)
            finally:
                self._room.release()
                self._queue.task_done()
        self._queue.task_done()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every version handed over so far has reached the controller."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() > deadline:
                log.warning("weights still being published after %.0f s", timeout)
                return
            time.sleep(0.01)
        with self._lock:
            replies, self._replies = self._replies, []
        if self._wait is not None and replies:
            self._wait(replies)

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=10)
