"""TensorBoard: a log dir per branch (``<run_dir>/tensorboard/<branch>``), so each branch
is a run of its own in TensorBoard, drawn from the step its parent forked at.

A rewind reopens the branch's writer with ``purge_step``: TensorBoard then hides what the
branch logged at or after that step before, so no step shows twice. Commands are text
entries (``commands``) at the step they took effect.
"""

from __future__ import annotations

from typing import Any

from ray_interactive.core.trackers.base import Fork, Note, Rewind, Rows, RunInfo, Sink


class TensorBoardSink(Sink):
    """Writes event files with ``torch.utils.tensorboard``."""

    name = "tensorboard"

    def __init__(self, info: RunInfo, flush_s: float = 5.0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer_cls = SummaryWriter
        self.dir = info.run_dir / "tensorboard"
        self.flush_s = flush_s
        self._writers: dict[str, Any] = {}

    def _writer(self, branch: str, purge_step: int | None = None) -> Any:
        w = self._writers.get(branch)
        if w is None or purge_step is not None:
            if w is not None:
                w.close()
            w = self._writer_cls(log_dir=str(self.dir / branch), purge_step=purge_step,
                                 flush_secs=max(1, round(self.flush_s)))
            self._writers[branch] = w
        return w

    def metrics(self, event: Rows) -> None:
        w = self._writer(event.branch)
        for step, t, values in event.rows:
            for key, value in values.items():
                w.add_scalar(key, value, global_step=step, walltime=t)

    def note(self, event: Note) -> None:
        self._writer(event.branch).add_text("commands", event.text, global_step=event.step, walltime=event.time)

    def fork(self, event: Fork) -> None:
        text = f"branch {event.name} continues {event.parent} from step {event.step} (checkpoint {event.checkpoint})"
        self._writer(event.name).add_text("branch", text, global_step=event.step)

    def rewind(self, event: Rewind) -> None:
        self._writer(event.branch, purge_step=event.step)

    def flush(self) -> None:
        for w in self._writers.values():
            w.flush()

    def close(self) -> None:
        for w in self._writers.values():
            w.close()
        self._writers.clear()
