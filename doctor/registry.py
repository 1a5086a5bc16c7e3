"""The check registry: one small function per check, metadata in the decorator.

Check ids are kebab-case and stable forever (tickets and docs link them). The order of
`doctor.checks.CHECK_MODULES`, then definition order inside a module, is the report order.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from doctor.context import DoctorContext
from doctor.probes import Probe
from doctor.report.model import Evidence, Fix, Status, is_kebab_case
from run_plan.errors import UsageError


@dataclass(frozen=True)
class Outcome:
    """What a check function returns; the runner adds id, title, section and timing."""

    status: Status
    summary: str
    evidence: tuple[Evidence, ...] = ()
    fix: Fix | None = None
    attachments: Mapping[str, Any] = field(default_factory=dict)  # top-level JSON objects, e.g. "estimate"

    @classmethod
    def ok(cls, summary: str, evidence: Iterable[Evidence] = (), **kw: Any) -> Outcome:
        return cls(Status.PASS, summary, tuple(evidence), **kw)

    @classmethod
    def warn(
        cls, summary: str, evidence: Iterable[Evidence] = (), fix: Fix | None = None, **kw: Any
    ) -> Outcome:
        return cls(Status.WARN, summary, tuple(evidence), fix, **kw)

    @classmethod
    def fail(
        cls, summary: str, evidence: Iterable[Evidence] = (), fix: Fix | None = None, **kw: Any
    ) -> Outcome:
        return cls(Status.FAIL, summary, tuple(evidence), fix, **kw)

    @classmethod
    def skip(cls, summary: str, evidence: Iterable[Evidence] = (), **kw: Any) -> Outcome:
        return cls(Status.SKIP, summary, tuple(evidence), **kw)

    @classmethod
    def error(
        cls, summary: str, evidence: Iterable[Evidence] = (), fix: Fix | None = None, **kw: Any
    ) -> Outcome:
        return cls(Status.ERROR, summary, tuple(evidence), fix, **kw)


CheckFn = Callable[[DoctorContext], Outcome]


@dataclass(frozen=True)
class CheckSpec:
    id: str
    title: str
    section: str
    run: CheckFn
    needs: tuple[str, ...] = ()  # probes that must have facts; else SKIP (missing) or ERROR (probe broke)
    wants: tuple[str, ...] = ()  # probes it reads when they have facts (fetched with the others up front)
    # (both by name: the keys of the report's facts)


_REGISTRY: dict[str, CheckSpec] = {}


def check(
    check_id: str,
    *,
    title: str,
    section: str,
    needs: Iterable[Probe[Any]] = (),
    wants: Iterable[Probe[Any]] = (),
) -> Callable[[CheckFn], CheckFn]:
    """Register a check. Raises ValueError on a non-kebab-case or duplicate id."""
    if not is_kebab_case(check_id):
        raise ValueError(f"check id {check_id!r} must be kebab-case")

    def register(fn: CheckFn) -> CheckFn:
        existing = _REGISTRY.get(check_id)
        if existing is not None and existing.run.__qualname__ != fn.__qualname__:
            raise ValueError(f"check id {check_id!r} registered twice")
        _REGISTRY[check_id] = CheckSpec(
            check_id, title, section, fn, tuple(p.name for p in needs), tuple(p.name for p in wants)
        )
        return fn

    return register


# Check modules in report order. A new check module is one line here (the registry finds it by name,
# as the probe registry finds probes: nothing below the checks imports them).
CHECK_MODULES: tuple[str, ...] = (
    "doctor.checks.platform",
    "doctor.checks.gpu",
    "doctor.checks.gpu_health",
    "doctor.checks.torch_cuda",
    "doctor.checks.bitsandbytes",
    "doctor.checks.libraries",
    "doctor.checks.import_shadowing",
    "doctor.checks.triton",
    "doctor.checks.model_source",
    "doctor.checks.config_load",
    "doctor.checks.model_load",
    "doctor.checks.prompt_fit",
    "doctor.checks.git_freshness",
    "doctor.checks.run_args",
    "doctor.checks.memory",
    "doctor.checks.plan_limits",
    "doctor.checks.server",
)


def load_checks() -> list[CheckSpec]:
    """Import every check module in report order and return the specs in that order."""
    order: list[str] = []
    for module in CHECK_MODULES:
        before = set(_REGISTRY)
        importlib.import_module(module)
        order.extend(k for k in _REGISTRY if k not in before and k not in order)
    # Modules imported earlier (e.g. by tests) registered before this call: keep module order anyway.
    by_module = {m: i for i, m in enumerate(CHECK_MODULES)}
    specs = list(_REGISTRY.values())
    specs.sort(key=lambda s: (by_module.get(s.run.__module__, len(by_module)), _definition_line(s)))
    return specs


def _definition_line(spec: CheckSpec) -> int:
    code = getattr(spec.run, "__code__", None)
    return code.co_firstlineno if code else 0


def select(specs: Sequence[CheckSpec], only: Sequence[str] = (), skip: Sequence[str] = ()) -> list[CheckSpec]:
    """Filter by check id or section name; unknown names are a usage error with suggestions."""
    known = {s.id for s in specs} | {s.section for s in specs}
    for name in (*only, *skip):
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = (
                f"Did you mean {', '.join(close)}?" if close else "Run `doctor --list` to see the check ids."
            )
            raise UsageError(f"unknown check or section {name!r}", hint=hint)
    chosen = [s for s in specs if not only or s.id in only or s.section in only]
    return [s for s in chosen if s.id not in skip and s.section not in skip]
