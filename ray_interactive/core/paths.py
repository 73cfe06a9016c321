"""Where runs live: the runs root and finding a run's directory by name or path, and the
Ray namespace of their actors.

Light on purpose (no pydantic, no torch): the CLI finds a run here before it knows whether
it needs anything heavier.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Namespace every run's named actors live in.
DEFAULT_NAMESPACE = "ray_interactive"
#: Where run directories live unless a run names its own: this variable, else ./runs.
RUNS_ENV = "RAY_INTERACTIVE_RUNS"
#: The runs root of a process started inside Ray's upload folder (a Ray job's working_dir,
#: which Ray deletes): a run written there would be lost with it.
JOB_RUNS_ROOT = "~/ray-interactive-runs"


def runs_root() -> Path:
    """Where runs without a ``run_dir`` live: ``$RAY_INTERACTIVE_RUNS``, else ``./runs``, but
    never Ray's temporary upload folder (a job's working_dir): there ``~/ray-interactive-runs``."""
    given = os.environ.get(RUNS_ENV, "").strip()
    if given:
        return Path(given).expanduser()
    if "runtime_resources" in Path.cwd().parts or any(p.startswith("_ray_pkg_") for p in Path.cwd().parts):
        return Path(JOB_RUNS_ROOT).expanduser()
    return Path("runs")


def find_run_dir(run: str, root: Path | None = None) -> Path | None:
    """``run`` as a run directory (a path holding ``config.json``), or ``<runs root>/<run>``
    (``root``, default :func:`runs_root`)."""
    for candidate in (Path(run), (root or runs_root()) / run):
        try:
            if (candidate / "config.json").is_file():
                return candidate.resolve()
        except (OSError, ValueError):  # a name that is not a valid path
            continue
    return None
