"""A wheel carries every data file the code reads next to itself."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_data_file_in_a_package_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config.get("package-data", {})
    missing = []
    for top in config["packages"]["find"]["include"]:
        for path in (ROOT / top.rstrip("*")).rglob("*"):
            rel = path.relative_to(ROOT)
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in rel.parts:
                continue
            # the nearest package above it and the file's path inside that package
            pkg = next(p for p in rel.parents if (ROOT / p / "__init__.py").exists())
            inner = str(rel.relative_to(pkg))
            if not any(fnmatch.fnmatch(inner, pat) for pat in patterns.get(".".join(pkg.parts), [])):
                missing.append(str(rel))
    assert not missing, f"not in [tool.setuptools.package-data] (a pip-installed wheel would lack them): {missing}"
