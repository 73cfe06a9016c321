"""Which experiment trackers a run can report to, and checking a ``report_to`` value.

Light on purpose: :mod:`ray_interactive.core.config` validates ``report_to`` with it, so
it imports no tracker library (it only asks whether one is installed).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

#: The pip extra that installs every tracker library.
EXTRA = "ray-interactive[trackers]"


@dataclass(frozen=True)
class TrackerSpec:
    """A tracker: the module it needs, the pip package that has it, and its sink class."""

    module: str
    package: str
    sink: str  # "module:Class" of its :class:`~ray_interactive.core.trackers.base.Sink`


TRACKERS: dict[str, TrackerSpec] = {
    "tensorboard": TrackerSpec("tensorboard", "tensorboard", "ray_interactive.core.trackers.tensorboard_sink:TensorBoardSink"),
    "mlflow": TrackerSpec("mlflow", "mlflow-skinny", "ray_interactive.core.trackers.mlflow_sink:MlflowSink"),
    "wandb": TrackerSpec("wandb", "wandb", "ray_interactive.core.trackers.wandb_sink:WandbSink"),
}


def is_installed(name: str) -> bool:
    """Whether the library tracker ``name`` needs can be imported here."""
    return importlib.util.find_spec(TRACKERS[name].module) is not None


def check_report_to(value: Any, installed: bool = True) -> list[str]:
    """``report_to`` as a list of known tracker names, in order, without repeats: a list or
    one name (``"tensorboard"``, ``"tensorboard,mlflow"``); ``None``, ``"none"`` or ``[]``:
    none. Raises ``ValueError`` naming the known trackers for an unknown one, and (unless
    ``installed`` is False: a stored config read elsewhere) the pip extra for one whose
    library is missing."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("report_to must be a tracker name or a list of them (tensorboard, mlflow, wandb)")
    names: list[str] = []
    for v in value:
        name = v.strip().lower()
        if name == "none":
            continue
        if name not in TRACKERS:
            raise ValueError(f"report_to: unknown tracker {v[:40]!r}; known: {', '.join(TRACKERS)} (or 'none')")
        if installed and not is_installed(name):
            spec = TRACKERS[name]
            raise ValueError(
                f"report_to {name!r} needs the {spec.package} package, which is not installed: "
                f"pip install '{EXTRA}' (or pip install {spec.package})"
            )
        if name not in names:
            names.append(name)
    return names

