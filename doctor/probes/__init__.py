"""Probes gather facts; checks judge them. The probe snapshot is the one seam tests fake.

A probe is a function `RunSpec -> facts` registered under a typed handle: `TORCH_LIVE = Probe[TorchLive]
("torch-live")` and `@probe(TORCH_LIVE)`, so `ctx.probe(TORCH_LIVE)` is a `TorchLive | Unavailable`. The
handle's name is the key of the report's `facts` object and of a test's snapshot. Facts are frozen
dataclasses or plain mappings (JSON-able). A probe that cannot answer returns `Unavailable` instead of
raising: missing hardware or a missing library is a value, not an exception.

Only modules under doctor/probes/ and doctor/memory/ may touch torch, bitsandbytes,
transformers or triton, and only inside a child process (doctor.children.child).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from doctor.unavailable import Unavailable, UnavailableKind

if TYPE_CHECKING:
    from run_plan.spec import RunSpec

__all__ = [
    "PROBE_MODULES",
    "Announce",
    "Probe",
    "ProbeFn",
    "Unavailable",
    "UnavailableKind",
    "load_announcers",
    "load_probes",
    "probe",
]

Facts = TypeVar("Facts")


@dataclass(frozen=True)
class Probe(Generic[Facts]):
    """A probe's name, typed with the facts it answers (or Unavailable)."""

    name: str


ProbeFn = Callable[["RunSpec"], object]  # RunSpec -> facts | Unavailable
# Told up front which probes a report will ask for (DoctorContext.prefetch), so probes that share a child
# process can start one for all of them.
Announce = Callable[["RunSpec", Iterable[str]], None]
_PROBES: dict[str, ProbeFn] = {}
_ANNOUNCERS: dict[str, Announce] = {}

# Modules whose import registers probes, in no particular order (probes run on demand).
PROBE_MODULES: tuple[str, ...] = (
    "doctor.probes.host",
    "doctor.probes.nvml",
    "doctor.probes.nvml_health",
    "doctor.probes.packages",
    "doctor.probes.libs_static",
    "doctor.probes.torch_live",
    "doctor.probes.bnb_live",
    "doctor.probes.triton_live",
    "doctor.probes.transformers_live",
    "doctor.probes.card_rates",
    "doctor.probes.server",
    "doctor.probes.model",
    "doctor.probes.config_load",
    "doctor.probes.prompt_frame",
    "doctor.probes.hub",
    "doctor.probes.git",
    "doctor.probes.run_args",
    "doctor.probes.memory",
)


def probe(
    handle: Probe[Facts], *, announce: Announce | None = None
) -> Callable[[Callable[[RunSpec], Facts | Unavailable]], Callable[[RunSpec], Facts | Unavailable]]:
    """Register the function that answers `handle`; `announce` hears which probes a report will ask for."""

    def register(fn: Callable[[RunSpec], Facts | Unavailable]) -> Callable[[RunSpec], Facts | Unavailable]:
        if handle.name in _PROBES and _PROBES[handle.name] is not fn:
            raise ValueError(f"probe {handle.name!r} registered twice")
        _PROBES[handle.name] = fn
        if announce is not None:
            _ANNOUNCERS[handle.name] = announce
        return fn

    return register


def _import_probe_modules() -> None:
    import importlib

    for module in PROBE_MODULES:
        importlib.import_module(module)


def load_probes() -> dict[str, ProbeFn]:
    """Every registered probe function by name."""
    _import_probe_modules()
    return dict(_PROBES)


def load_announcers() -> dict[str, Announce]:
    """The probes that want to hear, up front, which probes a report will ask for."""
    _import_probe_modules()
    return dict(_ANNOUNCERS)
