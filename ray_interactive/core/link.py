"""How a training loop in some process is connected to its run's controller.

Every loop receives its commands the same way: a :class:`CommandPuller` long-polls the
controller (``fetch(after_seq, timeout) -> Delivery``) on a thread of its own and hands
what comes to the loop's steering core, which applies it at its next control point. A
front-end whose loop runs in the caller's process (Hugging Face, a plain loop) is given a
way to open a :class:`RunLink` - the Ray one lives in ``ray_interactive.runtime`` - so
nothing under ``train/`` depends on Ray.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ray_interactive.core.messages import Delivery

if TYPE_CHECKING:
    from ray_interactive.core.config import RunConfig
    from ray_interactive.core.reporting import Reporter
    from ray_interactive.core.steering import Steering
    from ray_interactive.core.weights import Publisher

log = logging.getLogger(__name__)


class CommandPuller:
    """Feeds a steering core the commands its controller has accepted for it.

    ``fetch(after_seq, timeout)`` is a long poll answered the moment a command is accepted
    (``after_seq`` acknowledges what the loop has). Failures are retried (a controller
    being restarted answers again in a moment); a reply that asks for the run's
    description is passed on to the core. ``wake`` (optional) answers the poll in flight
    at once, so :meth:`stop` need not wait out its timeout.
    """

    def __init__(self, fetch: Callable[[int, float], Delivery], core: Steering, after_seq: int, name: str,
                 wake: Callable[[], None] | None = None) -> None:
        self._fetch, self.core, self.after, self._wake = fetch, core, after_seq, wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"{name}-commands", daemon=True)

    def fetch_once(self, timeout: float) -> None:
        delivery = self._fetch(self.after, timeout)
        if delivery.records:
            self.core.deliver(delivery.records)  # ones held through a recovery are numbered lower
            self.after = max(self.after, *(r.seq or 0 for r in delivery.records))
        if delivery.describe:
            self.core.describe_again()
            if not delivery.records:
                self._stop.wait(0.2)  # until the loop has answered it at its next boundary

    def start(self) -> CommandPuller:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.fetch_once(timeout=2.0)
            except Exception:  # noqa: BLE001 - the controller restarting: keep asking
                if self._stop.is_set():
                    return
                log.warning("fetching commands failed; retrying", exc_info=True)
                self._stop.wait(0.5)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            if self._wake is not None:
                try:
                    self._wake()
                except Exception:  # noqa: BLE001 - the controller gone: the poll times out instead
                    log.warning("could not release the command poll; waiting it out", exc_info=True)
            self._thread.join(timeout=timeout)


class RunLink(Protocol):
    """A run's controller as seen by a loop in this process (see ``ray_interactive.runtime.inprocess``)."""

    reporter: Reporter
    publisher: Publisher | None
    next_seq: int  # the number of the first command this loop gets
    next_weight_version: int
    resume_from: Path | None  # resuming: the checkpoint the loop continues from

    def replay(self, source_dir: str | Path) -> int:
        """Queue a run directory's applied commands, pinned to their steps; how many."""
        ...

    def connect(self, core: Steering) -> None:
        """Hand the core the commands accepted so far, then keep feeding it."""
        ...

    def client(self) -> Any:
        """A client of the run (commands, metrics), as any other process would use."""
        ...

    def close(self) -> None:
        """Stop feeding commands; flush and end the controller."""
        ...


class OpenRun(Protocol):
    """Opens the controller of a run: a new one, or with ``resume`` one whose directory
    holds it (continuing from checkpoint ``resume_from``, an id)."""

    def __call__(self, config: RunConfig, address: str | None, resume: bool = False,
                 resume_from: str | None = None) -> RunLink: ...
