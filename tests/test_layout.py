"""The package's shape: no import cycles (lazy imports included), no private names
reached across modules, and rooms that import each other only as docs/architecture.md's
room table says (one way).

Every ``import`` statement in every module of ``dslth_edge`` and ``exporters`` (which
installs as ``dslth_edge.exporters``) counts, wherever it stands: at the top, inside a
function, or under ``if TYPE_CHECKING:``. A cycle through function-level imports still
means two modules that each need the other.
"""

from __future__ import annotations

import ast
import re
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


@pytest.mark.parametrize("room", ["cli", "cost", "device", "data", "learn", "fleet", "runs", "util", "wire", "transport",
                                  "profiler"])
def test_every_room_is_a_package_with_a_docstring(room: str) -> None:
    init = ROOT / "dslth_edge" / room / "__init__.py"
    assert init.is_file(), f"dslth_edge/{room}/ is not a package"
    assert ast.get_docstring(ast.parse(init.read_text())), f"dslth_edge/{room}/__init__.py says nothing of what the room owns"


# --------------------------------------------------------------------------------------
# Rooms: docs/architecture.md's table against the code
# --------------------------------------------------------------------------------------
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _room(mod: str) -> str | None:
    """The room of a module: ``dslth_edge.<room>...`` (``errors`` for errors.py); None for the package itself."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else None


def _room_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """room -> the other rooms its modules import (lazy and TYPE_CHECKING imports included)."""
    edges: dict[str, set[str]] = {}
    for mod, targets in graph.items():
        room = _room(mod)
        if room is None:
            continue
        edges.setdefault(room, set()).update(r for r in map(_room, targets) if r is not None and r != room)
    return edges


def _documented_rooms(text: str) -> dict[str, set[str]]:
    """room -> rooms from the "imports (project)" column of the room table ("nothing": none;
    text in parentheses is a remark)."""
    section = text.split("## Rooms", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, set[str]] = {}
    header: list[str] | None = None
    for line in section.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set(cells[0]) <= set("-: "):
            continue
        room = cells[0].strip("`").rstrip("/").removesuffix(".py")
        column = re.sub(r"\([^)]*\)", "", cells[header.index("imports (project)")])
        rows[room] = {w.strip() for w in column.split(",") if w.strip() and w.strip() != "nothing"}
    return rows


def test_the_room_table_parser_reads_rows_and_remarks() -> None:
    text = ("## Rooms\n\n| room | owns | imports (project) |\n| --- | --- | --- |\n"
            "| `errors.py` | x | nothing |\n| `a/` | y | errors, b (the thing) |\n\n## Next\n| `z/` | q | a |\n")
    assert _documented_rooms(text) == {"errors": set(), "a": {"errors", "b"}}


def test_the_room_table_matches_the_imports() -> None:
    """Every room has a row, and its "imports (project)" column is exactly what it imports."""
    documented = _documented_rooms(ARCHITECTURE.read_text())
    actual = _room_edges(_graph())
    assert set(documented) == set(actual), (
        f"rooms in docs/architecture.md but not in the code: {sorted(set(documented) - set(actual))}; "
        f"in the code but not in the table: {sorted(set(actual) - set(documented))}")
    wrong = [f"{room}: table says {sorted(documented[room])}, code imports {sorted(actual[room])}"
             for room in sorted(actual) if documented[room] != actual[room]]
    assert not wrong, "docs/architecture.md's room table differs from the imports:\n" + "\n".join(wrong)


def _mutual_pairs(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted({(min(a, b), max(a, b)) for a, targets in edges.items() for b in targets if a in edges.get(b, set())})


def test_the_pair_check_finds_a_pair() -> None:
    graph = {"dslth_edge.a.x": {"dslth_edge.b.y"}, "dslth_edge.b.y": set(), "dslth_edge.b.z": {"dslth_edge.a.w"},
             "dslth_edge.a.w": set(), "dslth_edge.c": {"dslth_edge.a.w"}}
    edges = _room_edges(graph)
    assert edges == {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert _mutual_pairs(edges) == [("a", "b")]


def test_no_two_rooms_import_each_other() -> None:
    graph = _graph()
    pairs = _mutual_pairs(_room_edges(graph))
    both = {p for pair in pairs for p in (pair, pair[::-1])}
    where = [f"{mod} -> {target}" for mod, targets in sorted(graph.items()) for target in sorted(targets)
             if (_room(mod), _room(target)) in both]
    assert not pairs, f"rooms that import each other: {pairs}\n" + "\n".join(where)
