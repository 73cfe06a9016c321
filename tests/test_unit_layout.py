"""The package layout holds: no import cycles between modules, the steering core has no
Ray in it, the library does not reach outside itself, every documented name resolves."""

from __future__ import annotations

import ast
from pathlib import Path

import ray_interactive as ri

PACKAGE = Path(ri.__file__).resolve().parent


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every module this file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: {i for i in imports(p) if i in modules and i != m and not modules[i].name == "__init__.py"}
            for m, p in modules.items() if not p.name == "__init__.py"}


def test_no_import_cycles() -> None:
    g = graph()
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            cycle = path[path.index(m):] + [m]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if m in done:
            return
        for n in sorted(g.get(m, ())):
            visit(n, [*path, m])
        done.add(m)

    for m in sorted(g):
        visit(m, [])


def test_the_core_has_no_ray_and_the_library_stays_inside_itself() -> None:
    for path in PACKAGE.rglob("*.py"):
        found = imports(path)
        assert not any(i == "apps" or i.startswith("apps.") for i in found), f"{path} imports apps/"
        assert not any(i.startswith("neuralos_example") for i in found), f"{path} imports the demo"
        if path.parent.name == "core":
            assert not any(i == "ray" or i.startswith("ray.") for i in found), f"{path}: the core has no Ray in it"


def test_every_documented_name_resolves() -> None:
    for name in ri.__all__:
        assert getattr(ri, name) is not None
    assert callable(ri.hf.steer) and callable(ri.steer)
