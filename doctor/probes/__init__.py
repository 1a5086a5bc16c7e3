"""Probes gather facts; checks judge them. The probe snapshot is the one seam tests fake.

A probe is a function `RunSpec -> facts` registered with `@probe("name")`. Facts are frozen
dataclasses or plain mappings (JSON-able). A probe that cannot answer returns `Unavailable`
instead of raising: missing hardware or a missing library is a value, not an exception.

Only modules under doctor/probes/ and doctor/memory/ may touch torch, bitsandbytes,
transformers or triton, and only inside a child process (doctor.children.child).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from doctor.unavailable import Unavailable, UnavailableKind

__all__ = ["PROBE_MODULES", "ProbeFn", "Unavailable", "UnavailableKind", "load_probes", "probe"]

ProbeFn = Callable[[Any], Any]  # RunSpec -> facts | Unavailable
_PROBES: dict[str, ProbeFn] = {}

# Modules whose import registers probes, in no particular order (probes run on demand).
PROBE_MODULES: tuple[str, ...] = (
    "doctor.probes.host",
    "doctor.probes.nvml",
    "doctor.probes.nvml_health",
    "doctor.probes.packages",
    "doctor.probes.libs_static",
    "doctor.probes.libs_live",
    "doctor.probes.server",
    "doctor.probes.model",
    "doctor.probes.config_load",
    "doctor.probes.hub",
    "doctor.probes.git",
    "doctor.probes.run_args",
    "doctor.probes.memory",
)


def probe(name: str) -> Callable[[ProbeFn], ProbeFn]:
    """Register a probe under a unique name."""

    def register(fn: ProbeFn) -> ProbeFn:
        if name in _PROBES and _PROBES[name] is not fn:
            raise ValueError(f"probe {name!r} registered twice")
        _PROBES[name] = fn
        return fn

    return register


def load_probes() -> dict[str, ProbeFn]:
    import importlib

    for module in PROBE_MODULES:
        importlib.import_module(module)
    return dict(_PROBES)
