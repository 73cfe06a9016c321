"""The code needs no newer Python than ``pyproject.toml`` promises (checked by vermin, which
reads the syntax and the standard library's names), and this interpreter keeps the promise."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CODE = ["ray_interactive", "apps", "neuralos_example", "tests", "benchmarks", "studies"]


def promised() -> tuple[int, int]:
    spec = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    m = re.fullmatch(r">=\s*(\d+)\.(\d+)", spec)
    assert m, f"requires-python should be a plain lower bound, not {spec!r}"
    return int(m[1]), int(m[2])


def test_the_code_runs_on_the_promised_python() -> None:
    major, minor = promised()
    vermin = Path(sys.executable).parent / "vermin"
    if not vermin.exists():
        pytest.skip("vermin is not installed (pip install -e '.[dev]')")
    out = subprocess.run([str(vermin), "--no-tips", "--violations", f"-t={major}.{minor}-", *CODE],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"code that needs a newer Python than {major}.{minor}:\n{out.stdout[-3000:]}"


def test_this_interpreter_keeps_the_promise_and_ruff_targets_it() -> None:
    major, minor = promised()
    assert sys.version_info[:2] >= (major, minor)
    ruff = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]["target-version"]
    assert ruff == f"py{major}{minor}"
