"""DoctorContext: the planned run, a lazily filled, cached probe snapshot, and the plan resolved from it.

Production code runs the registered probes on demand; tests pass a ready snapshot
(`DoctorContext.from_snapshot`) built from a named scenario. Checks never notice the difference.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, overload

from doctor.probes import Announce, Probe, ProbeFn, Unavailable, load_announcers, load_probes
from doctor.report.model import to_jsonable
from run_plan.resolved import Decision, ResolvedPlan
from run_plan.spec import RunSpec

Facts = TypeVar("Facts")


class DoctorContext:
    def __init__(
        self,
        target: RunSpec,
        probes: Mapping[str, ProbeFn] | None = None,
        snapshot: Mapping[str, object] | None = None,
    ) -> None:
        self.target = target
        # What attn=auto and the like became before any check ran (doctor.plan.settle_static_choices).
        self.static_decisions: tuple[Decision, ...] = ()
        # The plan the checks judge, resolved once from the probes' facts (doctor.plan.resolve_plan).
        self.plan: ResolvedPlan | None = None
        self._probes = dict(load_probes() if probes is None else probes)
        self._announcers: dict[str, Announce] = load_announcers() if probes is None else {}
        self._cache: dict[str, object] = dict(snapshot or {})
        self._frozen = snapshot is not None  # a scenario: never run real probes
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.probe_seconds: dict[str, float] = {}

    @classmethod
    def from_snapshot(cls, target: RunSpec, snapshot: Mapping[str, object]) -> DoctorContext:
        return cls(target, probes={}, snapshot=snapshot)

    @overload
    def probe(self, which: Probe[Facts]) -> Facts | Unavailable: ...
    @overload
    def probe(self, which: str) -> Any: ...
    def probe(self, which: Probe[Any] | str) -> Any:
        """Facts of the probe, or Unavailable. Runs the probe once; never raises. A name (the key of the
        report's facts) gives the facts untyped."""
        name = which if isinstance(which, str) else which.name
        if name in self._cache:
            return self._cache[name]
        if self._frozen:
            return Unavailable(f"probe {name!r} is not part of this scenario", "missing")
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            if name not in self._cache:
                self._cache[name] = self._run_probe(name)
        return self._cache[name]

    def needed(self, which: Probe[Facts]) -> Facts:
        """Facts of a probe the check lists in `needs`: the runner gives the check a SKIP or an ERROR row
        without running it when that probe has none."""
        facts = self.probe(which)
        if isinstance(facts, Unavailable):
            raise LookupError(
                f"probe {which.name!r} has no facts ({facts.reason}): not among the check's needs"
            )
        return facts

    def _run_probe(self, name: str) -> object:
        fn = self._probes.get(name)
        if fn is None:
            return Unavailable(f"no probe named {name!r} is registered", "error")
        start = time.monotonic()
        try:
            return fn(self.target)
        except Exception as exc:  # a probe bug must not sink the report
            return Unavailable(
                f"probe {name!r} failed: {type(exc).__name__}: {exc}",
                "error",
                detail=traceback.format_exc(limit=4),
            )
        finally:
            self.probe_seconds[name] = time.monotonic() - start

    def prefetch(self, names: Iterable[str]) -> None:
        """Run several probes concurrently (child processes and NVML release the GIL)."""
        pending = [n for n in dict.fromkeys(names) if n not in self._cache]
        if self._frozen or not pending:
            return
        # Probes that share a child process (the live tier) learn up front who else will ask, so the
        # first of them starts one child for all.
        for announce in dict.fromkeys(a for a in (self._announcers.get(n) for n in pending) if a is not None):
            announce(self.target, pending)
        with ThreadPoolExecutor(max_workers=min(8, len(pending))) as pool:
            list(pool.map(self.probe, pending))

    def facts(self) -> dict[str, Any]:
        """JSON-able facts of every probe that ran, for the report's `facts` object."""
        return {name: to_jsonable(value) for name, value in sorted(self._cache.items())}
