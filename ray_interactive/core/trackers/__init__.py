"""Experiment trackers a run reports to (``RunConfig.report_to``): TensorBoard, MLflow, W&B.

The controller feeds them (:class:`TrackerFeed`: a bounded queue, one writer thread) with
every metric report, command outcome, branch and rewind; each tracker shows the run's
branches its own way (see :mod:`ray_interactive.core.trackers.base`). No Ray here; each
tracker's library is imported only when a run reports to it.
"""

from __future__ import annotations

from ray_interactive.core.trackers.base import Fork, Note, Rewind, Rows, RunInfo, Sink, note_of
from ray_interactive.core.trackers.feed import TrackerFeed, open_sink
from ray_interactive.core.trackers.registry import EXTRA, TRACKERS, check_report_to, is_installed

__all__ = [
    "EXTRA", "TRACKERS", "Fork", "Note", "Rewind", "Rows", "RunInfo", "Sink", "TrackerFeed", "check_report_to",
    "is_installed", "note_of", "open_sink",
]
