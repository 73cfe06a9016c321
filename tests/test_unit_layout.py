"""The layout holds: the layers import only downwards, Ray only in ``runtime/``, no import
cycles between modules, the library never reaches into the apps or the demo, and the apps
and the demo use only the public API (``import ray_interactive as ri``)."""

from __future__ import annotations

import ast
from pathlib import Path

import ray_interactive as ri

PACKAGE = Path(ri.__file__).resolve().parent
REPO = PACKAGE.parent
#: The layers, bottom first: a module imports only from its own layer or those below it,
#: and two packages of one layer do not import each other. The package's root modules
#: (the public API, the CLI) sit on top.
LAYERS: dict[str, int] = {
    "core": 0,
    "data": 1,
    "train": 2, "serve": 2,
    "runtime": 3,
    "agents": 4,
    "ui": 5,
    "examples": 6, "": 6,
}
#: What apps and the demo may import of the library: the public API.
PUBLIC = {"ray_interactive", "ray_interactive.hf"}


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, runtime_only: bool = False) -> set[str]:
    """Every module this file imports, at the top or inside a function (``runtime_only``:
    not the ones under ``if TYPE_CHECKING:``, which exist for type checkers only)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _type_only(node):
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def library() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> str:
    """``ray_interactive.core.commands.base`` -> ``core``; root modules -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else ""


def test_no_import_cycles() -> None:
    modules = library()
    graph = {m: {i for i in imports(p, runtime_only=True) if i in modules and i != m and modules[i].name != "__init__.py"}
             for m, p in modules.items() if p.name != "__init__.py"}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            cycle = path[path.index(m):] + [m]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if m in done:
            return
        for n in sorted(graph.get(m, ())):
            visit(n, [*path, m])
        done.add(m)

    for m in sorted(graph):
        visit(m, [])


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(LAYERS), f"give these packages a layer: {sorted(packages - set(LAYERS))}"


def test_layers_import_only_downwards() -> None:
    modules = library()
    upward = []
    for m, p in modules.items():
        mine = layer(m)
        for i in imports(p):  # type-only imports count too: no arrow runs up
            if i not in modules or i == "ray_interactive":
                continue
            theirs = layer(i)
            if theirs != mine and LAYERS[theirs] >= LAYERS[mine] and LAYERS[mine] != LAYERS[""]:
                upward.append(f"{m} ({mine or 'root'}) -> {i} ({theirs or 'root'})")
    assert not upward, "imports that run up or sideways:\n" + "\n".join(sorted(set(upward)))


def test_ray_only_in_runtime() -> None:
    outside = [module_name(p) for p in PACKAGE.rglob("*.py")
               if layer(module_name(p)) != "runtime" and any(i == "ray" or i.startswith("ray.") for i in imports(p))]
    assert not outside, f"Ray is imported outside ray_interactive/runtime/: {outside}"


def test_the_library_stays_inside_itself() -> None:
    for path in PACKAGE.rglob("*.py"):
        found = imports(path)
        assert not any(i == "apps" or i.startswith("apps.") for i in found), f"{path} imports apps/"
        assert not any(i.startswith("neuralos_example") for i in found), f"{path} imports the demo"


def test_apps_and_the_demo_use_only_the_public_api() -> None:
    private = []
    for folder in ("apps", "neuralos_example"):
        for path in (REPO / folder).rglob("*.py"):
            for i in imports(path):
                if i.startswith("ray_interactive") and i not in PUBLIC and not any(
                        i == f"{p}.{name}" for p in PUBLIC for name in ri.__all__ + ["hf"]):
                    private.append(f"{module_name(path)} -> {i}")
    assert not private, "use `import ray_interactive as ri` (add what is missing to its __all__):\n" + "\n".join(private)


def test_every_documented_name_resolves() -> None:
    assert sorted(ri.__all__) == sorted(ri._WHERE), "ray_interactive.__all__ and its _EXPORTS disagree"
    for name in ri.__all__:
        assert getattr(ri, name) is not None
    assert callable(ri.hf.steer) and callable(ri.steer)


def test_the_controller_starts_without_torch() -> None:
    """The controller holds no tensors: it imports no torch (a second saved at every run's start)."""
    import subprocess
    import sys

    code = "import sys, ray_interactive.runtime.controller_actor; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.stdout.strip() == "False", out.stdout + out.stderr[-2000:]
