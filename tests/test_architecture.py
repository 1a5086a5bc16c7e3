"""The house's layers, checked from the source: run_plan < doctor < niah_run, no import running back up,
no import circle, and neither CLI imported by the other tool (docs/architecture.md); inside doctor,
run_plan and niah_run, every file on a floor and no import running up a floor."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

LAYERS = {"run_plan": 0, "doctor": 1, "niah_run": 2}
# Inside a package, from the ground up: a file may import files of its own floor and the floors below.
# A new file goes on the floor of its job (a new backend is under backends/, a new report module beside
# summary); this test names any file that has no floor yet.
INNER_FLOORS: dict[str, list[tuple[str, ...]]] = {
    "run_plan": [
        # the ground: errors, text, units, files, HTTP, shell words, time arithmetic, needle draws, the GGUF
        # cache's layout; no plan in sight
        (
            "errors",
            "text",
            "units",
            "safe_files",
            "http",
            "shell",
            "timing",
            "torch_builds",
            "hub_kernels",
            "needle_draws",
            "gguf_cache",
        ),
        (
            "sizes",
            "spec",
            "server_room",
            "openai_http",
            "prompt_frame",
        ),  # a plan's values: sizes, the RunSpec, a server's room, what its prompts hold besides the haystack
        ("resolved", "options"),  # the judged plan, and how every setting is declared
    ],
    "niah_run": [
        ("rows", "results", "run_folder", "config"),  # a run folder's records: rows, results.jsonl, config
        ("haystack", "scoring", "needles", "prompt"),  # what a trial asks, and how an answer is scored
        ("summary", "heatmap", "compare"),  # rows read back into a summary, a picture, a comparison
        ("backends", "prefill"),  # the models: the backend contract, its registry, local and server
        ("trials", "identity", "progress", "preflight", "sweep"),  # the loop and what it builds on
        ("serve", "cli", "__main__"),  # the commands
    ],
}

# doctor's floors, lowest first. A module may import its own floor and the floors below it, never one above;
# a new module of doctor gets a floor here (the longest matching prefix places it).
DOCTOR_FLOORS: tuple[tuple[str, ...], ...] = (
    ("doctor", "doctor.unavailable", "doctor.model_config", "doctor.report"),  # values, no machinery
    ("doctor.children",),  # other processes: a child with a timeout, a forked copy
    ("doctor.runtime",),  # the execution paths niah runs and the sizing child traces
    ("doctor.memory",),  # the estimator
    ("doctor.probes",),  # facts about the machine and the model
    ("doctor.context",),  # one run's facts, cached, and the plan resolved from them
    ("doctor.load_decisions", "doctor.plan"),  # the plan
    ("doctor.registry",),  # how a check is declared
    ("doctor.checks",),  # the judgements
    ("doctor.runner",),  # checks run into a report
    ("doctor.api",),  # judge(): what niah calls
    ("doctor.boundary", "doctor.diff", "doctor.explain"),  # the commands' error boundary and sub-commands
    ("doctor.cli", "doctor.__main__"),  # `doctor`
)


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


def _inner_floor(module: str) -> int | None:
    """The floor of a module inside its package (None: the package's own __init__, or no floor yet)."""
    package, _, rest = module.partition(".")
    if not rest:
        return None
    room = rest.split(".")[0]
    for floor, rooms in enumerate(INNER_FLOORS[package]):
        if room in rooms:
            return floor
    return None


def test_every_file_of_run_plan_and_niah_run_has_a_floor() -> None:
    unplaced = [
        name
        for name in _graph()
        if name.split(".")[0] in INNER_FLOORS and "." in name and _inner_floor(name) is None
    ]
    assert unplaced == []


def test_no_import_runs_up_a_floor_inside_run_plan_and_niah_run() -> None:
    upward = [
        (src, dst)
        for src, targets in _graph().items()
        for dst in targets
        if src.split(".")[0] in INNER_FLOORS
        and dst.split(".")[0] == src.split(".")[0]
        and (low := _inner_floor(src)) is not None
        and (high := _inner_floor(dst)) is not None
        and high > low
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


def _doctor_floor(module: str) -> int | None:
    placed = [
        (len(prefix), floor)
        for floor, prefixes in enumerate(DOCTOR_FLOORS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(placed)[1] if placed else None


def test_every_doctor_module_stands_on_a_floor() -> None:
    assert [m for m in _graph() if m.startswith("doctor") and _doctor_floor(m) is None] == []


def test_no_import_runs_up_doctors_floors() -> None:
    upward = [
        (src, dst)
        for src, targets in _graph().items()
        if src.startswith("doctor")
        for dst in targets
        if dst.startswith("doctor") and (_doctor_floor(dst) or 0) > (_doctor_floor(src) or 0)
    ]
    assert upward == []


def test_the_report_and_the_child_machinery_stand_on_their_own() -> None:
    """The report model and its renderers import nothing of the doctor's machinery; the child-process
    floor knows nothing of the probes or the estimator above it."""
    graph = _graph()
    report = [(s, d) for s, ts in graph.items() if s.startswith("doctor.report") for d in ts]
    assert [(s, d) for s, d in report if not d.startswith(("doctor.report", "run_plan"))] == []
    children = [(s, d) for s, ts in graph.items() if s.startswith("doctor.children") for d in ts]
    allowed = ("doctor.children", "doctor.unavailable", "run_plan")
    assert [(s, d) for s, d in children if not d.startswith(allowed)] == []


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
