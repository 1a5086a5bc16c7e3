"""One frozen, stdlib-only data model shared by every renderer and by `niah`'s preflight.

Contracts: check ids (kebab-case, never renamed) and the JSON produced from this model
(`schema_version`, documented in docs/report-format.md). Human text is not a contract.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from run_plan.errors import ExitCode
from run_plan.shell import shell_join, shell_line_problem

SCHEMA_VERSION = 1
_KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")

Scalar = str | int | float | bool | None
# A printed command: a literal line we wrote ourselves, or an argument list that `shell_join` quotes.
# Anything holding a value from outside (a path, a model id, a URL) must be given as an argument list.
Command = str | tuple[object, ...] | list[object]


# Set by the test suite: a printed command that would not paste into a shell raises where it is made, so
# every check's fixes are held to it by every test that reaches them (not only by tests that look).
STRICT_COMMANDS_ENV = "NIAH_DOCTOR_STRICT_COMMANDS"


def _as_command_line(command: Command) -> str:
    line = command if isinstance(command, str) else shell_join(command)
    if os.environ.get(STRICT_COMMANDS_ENV) == "1" and "<redacted" not in line:  # a scrubbed secret: by design
        problem = shell_line_problem(line)
        if problem:
            raise ValueError(f"printed command {line!r} {problem}")
    return line


class Status(str, Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"


# Worst first; "error" (the doctor could not tell) ranks below "fail" (it could, and it is bad).
_RANK = {Status.FAIL: 4, Status.ERROR: 3, Status.WARN: 2, Status.SKIP: 1, Status.PASS: 0}


def worst_status(statuses: Iterable[Status], default: Status = Status.PASS) -> Status:
    """The most serious status: fail > error > warn > skip > pass."""
    return max(statuses, key=_RANK.__getitem__, default=default)


def is_kebab_case(text: str) -> bool:
    return bool(_KEBAB.match(text))


@dataclass(frozen=True, init=False)
class Evidence:
    """One fact behind a verdict, where it came from, and how a human can see it too."""

    key: str  # e.g. "torch.version.cuda", "gpu[0].memory_total_bytes"
    value: Any  # a scalar or a small JSON-able structure
    source: str  # "nvml", "torch", "metadata", "config.json", "git", "env", "estimate", ...
    how: str | None = None  # a command that shows the same fact (given as an argument list: shell-quoted)

    def __init__(self, key: str, value: Any, source: str, how: Command | None = None) -> None:
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "how", None if how is None else _as_command_line(how))


@dataclass(frozen=True)
class CodeEdit:
    """A change inside a file the user runs (a script's `from_pretrained(...)` call): shown as code at its
    file:line, never as a shell command, because pasting Python into a shell runs nothing useful."""

    path: str
    line: int | None  # 1-based; None when only the file is known
    code: str  # what the line (or the argument) should read

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path


@dataclass(frozen=True, init=False)
class Fix:
    summary: str  # imperative sentence: "Install a CUDA build of torch"
    # Printed lines, each a complete shell command that pastes as it is (shell_line_problem says why one
    # would not). Given as literal lines or as argument lists (tuple/list) that are joined with shell
    # quoting, so a model folder named `m; touch PWNED #` prints as one quoted word and pasting the line
    # runs nothing else. Anything holding an outside value must be given as an argument list.
    commands: tuple[str, ...] = ()
    link: str | None = None
    edits: tuple[CodeEdit, ...] = ()  # changes inside the run's own scripts, shown as code

    def __init__(
        self,
        summary: str,
        commands: str | Iterable[Command] = (),
        link: str | None = None,
        edits: Iterable[CodeEdit] = (),
    ) -> None:
        given: tuple[Command, ...] = (commands,) if isinstance(commands, str) else tuple(commands)
        object.__setattr__(self, "summary", summary)
        object.__setattr__(self, "commands", tuple(_as_command_line(c) for c in given))
        object.__setattr__(self, "link", link)
        object.__setattr__(self, "edits", tuple(edits))


@dataclass(frozen=True)
class CheckResult:
    id: str
    title: str
    section: str
    status: Status
    summary: str  # one line
    evidence: tuple[Evidence, ...] = ()
    fix: Fix | None = None
    duration_ms: int = 0
    error: str | None = None  # only for Status.ERROR: what broke inside the doctor or its probe

    def __post_init__(self) -> None:
        if not is_kebab_case(self.id):
            raise ValueError(f"check id {self.id!r} is not kebab-case")


@dataclass(frozen=True)
class ToolInfo:
    name: str
    version: str
    argv: tuple[str, ...]

    @property
    def command_line(self) -> str:
        """The invocation as a shell-quoted line (what markdown and JSON print)."""
        return shell_join(self.argv)


@dataclass(frozen=True)
class Report:
    tool: ToolInfo
    created_at: str  # ISO 8601, UTC
    target: Mapping[str, Any]  # what was asked: model, context, quant, scripts, ...
    checks: tuple[CheckResult, ...]
    facts: Mapping[str, Any] = field(default_factory=dict)  # probe name -> JSON-able facts
    # Extra top-level JSON objects contributed by checks, e.g. {"estimate": {...}} from the memory section.
    attachments: Mapping[str, Any] = field(default_factory=dict)
    redactions: tuple[str, ...] = ()  # what the redactor replaced (kinds, never the values)
    schema_version: int = SCHEMA_VERSION

    @property
    def worst(self) -> Status:
        return worst_status(c.status for c in self.checks)

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Status}
        for c in self.checks:
            out[c.status.value] += 1
        return out

    def exit_code(self, *, strict: bool = False) -> ExitCode:
        statuses = {c.status for c in self.checks}
        if Status.FAIL in statuses or (strict and statuses & {Status.WARN, Status.ERROR}):
            return ExitCode.FAILURES
        return ExitCode.OK

    def verdict(self, *, strict: bool = False) -> str:
        counts = self.counts()
        if self.exit_code(strict=strict) == ExitCode.OK:
            head = "OK" if not counts["warn"] and not counts["error"] else "OK with warnings"
        else:
            head = "PROBLEMS FOUND"
        detail = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        return f"{head}: {detail}" if detail else head


def to_jsonable(obj: Any) -> Any:
    """Turn the dataclass tree into plain JSON types (enums by value, tuples as lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        # JSON has no Infinity/NaN: json.dumps would write them anyway and produce an invalid document.
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def report_to_json_dict(report: Report) -> dict[str, Any]:
    """The JSON document: schema_version first, attachments (e.g. `estimate`) at top level."""
    counts = report.counts()
    doc: dict[str, Any] = {
        "schema_version": report.schema_version,
        "tool": {**to_jsonable(report.tool), "command": report.tool.command_line},
        "created_at": report.created_at,
        "target": to_jsonable(report.target),
        "summary": {**counts, "verdict": report.verdict(), "exit_code": int(report.exit_code())},
        "checks": [to_jsonable(c) for c in report.checks],
        "facts": to_jsonable(report.facts),
    }
    for key, value in report.attachments.items():
        doc[key] = to_jsonable(value)
    doc["redactions"] = list(report.redactions)
    return doc
