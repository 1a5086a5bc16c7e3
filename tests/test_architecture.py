"""The house's layers, checked from the source: run_plan < doctor < niah_run, no import running back up,
no import circle, and neither CLI imported by the other tool (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

LAYERS = {"run_plan": 0, "doctor": 1, "niah_run": 2}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of the file (function-level imports count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in LAYERS}


def _graph() -> dict[str, set[str]]:
    files = [p for top in LAYERS for p in (REPO / top).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {target for target in _imports(path) if target in modules and target != name}
    return graph


def test_no_import_runs_back_up_a_layer() -> None:
    upward = [
        (src, dst)
        for src, targets in _graph().items()
        for dst in targets
        if LAYERS[dst.split(".")[0]] > LAYERS[src.split(".")[0]]
    ]
    assert upward == []


def test_neither_tool_imports_the_other_tools_cli() -> None:
    graph = _graph()
    assert not any("doctor.cli" in targets for src, targets in graph.items() if src.startswith("niah_run"))
    assert not any(
        t.startswith("niah_run")
        for src, targets in graph.items()
        if src.startswith("doctor")
        for t in targets
    )


def test_no_import_circle_between_modules() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert circles == []


def test_every_check_id_is_indexed_in_docs_checks_md() -> None:
    from doctor.registry import load_checks

    index = (REPO / "docs" / "checks.md").read_text(encoding="utf-8")
    assert [spec.id for spec in load_checks() if f"`{spec.id}`" not in index] == []
