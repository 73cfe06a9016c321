"""Every command kind, one module each. Importing this package imports them all, which
registers them (:data:`ray_interactive.core.commands.base.KINDS`): a new kind is a new
module here and nothing else."""

from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
