"""The package's shape: no import cycles (lazy imports included) and no private names
reached across modules.

Every ``import`` statement in every module of ``dslth_edge`` and ``exporters`` (which
installs as ``dslth_edge.exporters``) counts, wherever it stands: at the top, inside a
function, or under ``if TYPE_CHECKING:``. A cycle through function-level imports still
means two modules that each need the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_files() -> dict[str, Path]:
    """dotted module name -> file, for the installed layout."""
    out: dict[str, Path] = {}
    for base, prefix in ((ROOT / "dslth_edge", ("dslth_edge",)), (ROOT / "exporters", ("dslth_edge", "exporters"))):
        for path in base.rglob("*.py"):
            parts = list(prefix) + list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _module_files()


def _is_package(mod: str) -> bool:
    return MODULES[mod].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(mod: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every project import in ``mod``."""
    tree = ast.parse(MODULES[mod].read_text(), str(MODULES[mod]))
    found: list[tuple[str, str | None, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    found.append((alias.name, None, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(mod, node)
            if target not in MODULES:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:  # `from pkg import submodule`
                    found.append((sub, None, node.lineno))
                else:
                    found.append((target, alias.name, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    return {mod: {target for target, _, _ in _imports(mod) if target != mod} for mod in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (lazy imports count too):\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _private_uses(mod: str) -> list[str]:
    bad = []
    for target, name, line in _imports(mod):
        if name and name.startswith("_") and not name.startswith("__") and target != mod:
            bad.append(f"{MODULES[mod].relative_to(ROOT)}:{line} imports {target}.{name}")
    # `module._name` on a project module bound by `import x` / `from pkg import module`
    tree = ast.parse(MODULES[mod].read_text())
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    bound[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(mod, node)
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    bound[alias.asname or alias.name] = f"{target}.{alias.name}"
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__") and bound[node.value.id] != mod):
            bad.append(f"{MODULES[mod].relative_to(ROOT)}:{node.lineno} reads {bound[node.value.id]}.{node.attr}")
    return bad


def test_no_private_names_across_modules() -> None:
    bad = [b for mod in sorted(MODULES) for b in _private_uses(mod)]
    assert not bad, "private names reached across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("room", ["cli", "device", "data", "learn", "fleet", "runs", "wire", "transport", "profiler"])
def test_every_room_is_a_package_with_a_docstring(room: str) -> None:
    init = ROOT / "dslth_edge" / room / "__init__.py"
    assert init.is_file(), f"dslth_edge/{room}/ is not a package"
    assert ast.get_docstring(ast.parse(init.read_text())), f"dslth_edge/{room}/__init__.py says nothing of what the room owns"
