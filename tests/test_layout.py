"""The house in order: the three rooms import in one direction (daemon -> models <- training),
models never imports torch, and no package has an import circle. Read from the source with
``ast``, every import counted: module level, inside a function, and under ``if TYPE_CHECKING:``
(a type named from another module is a dependency on it, even if it never runs)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("daemon", "models", "training")
TORCH = {"torch", "torchaudio", "torchvision"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(("spkrec", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from . import x` names a module
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for room in ROOMS for p in (REPO / room).rglob("*.py")}
    return {name: {i for i in _imports(path) if i in files} | {i for i in _imports(path) if i.split(".")[0] in TORCH}
            for name, path in files.items()}


def test_rooms_import_in_one_direction():
    graph = _graph()
    wrong = []
    for name, imported in graph.items():
        room = name.split(".")[1]
        for target in imported:
            top = target.split(".")
            if room == "models" and (top[0] in TORCH or top[1:2] in (["daemon"], ["training"])):
                wrong.append(f"{name} -> {target}")
            if room == "daemon" and (top[0] in TORCH or top[1:2] == ["training"]):
                wrong.append(f"{name} -> {target}")
            if room == "training" and top[1:2] == ["daemon"]:
                wrong.append(f"{name} -> {target}")
    assert not wrong, wrong


def test_no_import_circles_inside_a_package():
    graph = {name: {t for t in targets if t.startswith("spkrec.")} for name, targets in _graph().items()}
    cycles = []

    def visit(node: str, path: list[str], seen: set[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt.split(".")[1] != node.split(".")[1]:
                continue  # across rooms the direction test above holds
            if nxt in path:
                cycle = path[path.index(nxt):] + [nxt]
                if min(cycle[:-1]) == cycle[0]:
                    cycles.append(" -> ".join(cycle))
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, path + [nxt], seen)

    for start in sorted(graph):
        visit(start, [start], {start})
    assert not sorted(set(cycles)), sorted(set(cycles))


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_each_part_registers_its_config_section_and_the_loader_finds_it():
    """The parts' sections come to the loader through the ``spkrec.config`` entry points (the
    loader names no part); a section's module must not reach ``models.config`` itself, or
    loading the config would import itself half-built."""
    import tomllib
    from importlib.metadata import entry_points

    from spkrec.models.config import SECTIONS

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["spkrec.config"]
    installed = {e.name: e.value for e in entry_points(group="spkrec.config")}
    assert installed == declared, "the install's metadata is stale: run bash .ci/setup"
    graph = _graph()
    for name, value in declared.items():
        module = value.split(":")[0]
        assert module in graph, value
        assert "spkrec.models.config" not in _closure(graph, module), f"{module} reaches the loader"
    assert {s.name for s in SECTIONS} >= set(declared)
