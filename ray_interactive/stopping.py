"""A clean stop for the long-running commands (``agent``, ``ui``, a watched ``run``): Ctrl-C
and SIGTERM set a flag that their loop waits on, so they wake at once, clean up and exit
with one line instead of a traceback from wherever the signal landed (inside a Ray call,
an HTTP request, a model's forward pass).

A second signal while the cleanup runs exits at once: a person pressing Ctrl-C twice
means now.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

#: The signals that stop, and the exit status each gives: 130 is the shell's for Ctrl-C;
#: SIGTERM asks for an orderly stop, and one that went in order is a success.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 0}


class StopSignals:
    """Within the block, SIGINT and SIGTERM set :attr:`event` (wait on it instead of sleeping).

    Handlers can only be installed from the main thread; elsewhere the block installs none
    and only :meth:`stop` sets the event.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in EXIT_CODES:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():  # the second one: do not wait for the cleanup
            print(f"{signal.Signals(signum).name} again: exiting now", file=sys.stderr, flush=True)
            os._exit(EXIT_CODES.get(signal.Signals(signum), 1))
        self.signum = signum
        self.event.set()

    def stop(self) -> None:
        self.event.set()

    @property
    def name(self) -> str | None:
        """The signal that stopped it (None: none did)."""
        return None if self.signum is None else signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 0 if self.signum is None else EXIT_CODES.get(signal.Signals(self.signum), 1)

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(timeout)


__all__ = ["EXIT_CODES", "StopSignals"]
