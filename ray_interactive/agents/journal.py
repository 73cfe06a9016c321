"""An agent's journal: ``agent-<name>.jsonl`` in the run directory, one whole JSON line per
decision - what it saw, proposed, was refused, tested and did (read by the UI and people)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class Journal:
    """``agent-<name>.jsonl`` in the run directory: one whole line per tick."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, default=str) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)

    def read(self, tail_bytes: int | None = None) -> list[dict[str, Any]]:
        """The entries, oldest first; with ``tail_bytes`` only those in the file's last bytes (a
        long run's journal grows; a refresh needs its end). A line being written is skipped."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            size = f.seek(0, 2)
            start = 0 if tail_bytes is None else max(0, size - tail_bytes)
            f.seek(start)
            lines = f.read().decode("utf-8", errors="replace").splitlines()
        if start > 0:
            lines = lines[1:]  # the first line of a cut tail is partial
        entries = []
        for x in lines:
            try:
                entries.append(json.loads(x))
            except json.JSONDecodeError:
                continue
        return entries


__all__ = ["Journal"]
