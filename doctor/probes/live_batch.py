"""LIVE tier: the one shared child that imports torch and exercises the libraries for the live probes.

Each library is its own probe (doctor.probes.torch_live, bnb_live, triton_live, transformers_live,
card_rates), but the probes a report needs share ONE child: `DoctorContext.prefetch` announces them up
front, the first one to run starts the child for all of them, that child imports torch once and forks a
worker per probe (doctor.children._child_main), and the others wait for their share. Each worker has
`RunSpec.probe_timeout_s`, and a hang or a segfault comes back as an Unavailable(error|timeout) value
for that probe alone, which the runner turns into an ERROR row. The parent never imports these
libraries.

Live probes run when `--live` is given, or by default when NVML sees a GPU: on a CPU-only box,
`import torch` (~4 s) and `import bitsandbytes` (~9 s) would blow the doctor's start-up budget
and tell us nothing the static tier does not.

The child functions take a dict and return a JSON-able dict, and report a failing import as data
(`import_error`), not as an exception.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from doctor.children.child import ChildResult, run_stages_in_child
from doctor.probes import Unavailable
from doctor.probes.nvml import nvml_sees_gpu
from doctor.probes.packages import find_dist
from run_plan.spec import RunSpec

NOT_LIVE_REASON = "no NVIDIA GPU visible; live CUDA probes skipped (use --live to force)"


def live_gate(target: RunSpec) -> Unavailable | None:
    """None when live probes should run for this target, else why not."""
    live = target.live
    if live is False:
        return Unavailable("live probes disabled (--no-live)", "not-applicable")
    if live is None and not nvml_sees_gpu():
        return Unavailable(NOT_LIVE_REASON, "not-applicable")
    return None


def not_installed(dists: Iterable[str], env: Mapping[str, str] | None) -> Unavailable | None:
    """Unavailable when none of `dists` is installed here (not asked for a test's own environment)."""
    names = tuple(dists)
    if env is None and all(find_dist(name) is None for name in names):
        return Unavailable(f"{names[0]} is not installed", "missing")
    return None


def short_error(exc: BaseException, limit: int = 800) -> str:
    return f"{type(exc).__name__}: {exc}"[:limit]


@dataclass(frozen=True)
class Beside:
    """A stage of a live probe's own that runs in another worker beside it, and the keys of the probe's
    answer it fills (None where that worker failed); not joined when the probe's own import failed."""

    suffix: str  # the stage is named "<probe>.<suffix>"
    function: str  # "module:function"
    keys: tuple[str, ...]


@dataclass(frozen=True)
class LiveRequest:
    """What one live probe asks of the shared child."""

    function: str  # "module:function", run in a worker forked after the preload
    args: Mapping[str, Any]
    what: str  # what the worker does, for the error when it fails: "importing torch in a child process"
    preload: tuple[str, ...] = ()  # modules the child imports once before it forks the workers
    beside: tuple[Beside, ...] = ()


Answer = dict[str, Any] | Unavailable
RequestFor = Callable[[RunSpec], LiveRequest | Unavailable]


def _key(target: object) -> Hashable:
    try:
        hash(target)
    except TypeError:  # an unhashable target type: this object is the only one that can match
        return id(target)
    return target


@dataclass
class LiveBatch:
    """The shared child's bookkeeping: which probes were announced for which target, and the answers
    that probes asked first owe to the others."""

    requests: dict[str, RequestFor] = field(default_factory=dict)
    # Seconds each stage of the last batch ran after the fork (its own work, the shared import excluded);
    # read by benchmarks/doctor_startup.py, never by a check.
    last_seconds: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _announced: dict[Hashable, set[str]] = field(default_factory=dict)
    _pending: dict[tuple[Hashable, str], Future[Answer]] = field(default_factory=dict)

    def register(self, name: str, request_for: RequestFor) -> None:
        """The live probe `name` and how it builds its request for a target."""
        self.requests[name] = request_for

    def announce(self, target: RunSpec, names: Iterable[str]) -> None:
        """The live probes this report will ask for, so the first one can start a child for all of them."""
        wanted = {n for n in names if n in self.requests}
        if wanted:
            with self._lock:
                self._announced.setdefault(_key(target), set()).update(wanted)

    def answer(
        self,
        name: str,
        target: RunSpec,
        request: LiveRequest | Unavailable,
        env: dict[str, str] | None = None,
        private: bool = False,
    ) -> Answer:
        """Probe `name`'s answer: from the target's shared child, or from a child of its own for a test's
        environment or arguments (`env`, `private`)."""
        if isinstance(request, Unavailable):
            return request
        if env is not None or private:
            return self.run(target, {name: request}, env)[name]
        return self._shared(name, target, request)

    def run(
        self, target: object, requests: Mapping[str, LiveRequest], env: dict[str, str] | None = None
    ) -> dict[str, Answer]:
        """One child for `requests`: its preloads imported once, a worker per request (and per stage
        beside one). Of the target (a RunSpec, or a test's stand-in) it reads only `probe_timeout_s`."""
        timeout = float(getattr(target, "probe_timeout_s", 60.0))
        preload = tuple(dict.fromkeys(m for r in requests.values() for m in r.preload))
        stages: dict[str, tuple[str, dict[str, Any]]] = {}
        for name, request in requests.items():
            stages[name] = (request.function, dict(request.args))
            for beside in request.beside:
                stages[f"{name}.{beside.suffix}"] = (beside.function, {})
        results = run_stages_in_child(stages, timeout_s=timeout, preload=preload, env=env)
        self.last_seconds.update({name: round(r.seconds, 2) for name, r in results.items()})
        answers: dict[str, Answer] = {}
        for name, request in requests.items():
            result = results[name]
            answer = (
                result.data if result.ok and result.data is not None else result.as_unavailable(request.what)
            )
            if isinstance(answer, dict) and not answer.get("import_error"):
                for beside in request.beside:
                    _join(answer, beside, results.get(f"{name}.{beside.suffix}"))
            answers[name] = answer
        return answers

    def _shared(self, name: str, target: RunSpec, request: LiveRequest) -> Answer:
        """This probe's share of the target's one live child (started by whichever probe asks first)."""
        key = _key(target)
        with self._lock:
            future = self._pending.pop((key, name), None)
            if future is None:
                others = self._announced.pop(key, set()) - {name}
                batch: dict[str, Future[Answer]] = {n: Future() for n in others}
                for other, fut in batch.items():
                    self._pending[(key, other)] = fut
        if future is not None:
            return future.result()
        requests: dict[str, LiveRequest] = {name: request}
        results: dict[str, Answer]
        try:
            for other, fut in batch.items():
                req = self.requests[other](target)
                if isinstance(req, Unavailable):
                    fut.set_result(req)
                else:
                    requests[other] = req
            results = self.run(target, requests)
        except Exception as exc:  # never leave another probe waiting forever
            failed = Unavailable(f"live probes failed: {short_error(exc, 300)}", "error")
            results = {n: failed for n in requests}
        for other, fut in batch.items():
            if not fut.done():
                fut.set_result(results.get(other, Unavailable("the live child gave no answer", "error")))
        return results[name]


def _join(answer: dict[str, Any], beside: Beside, result: ChildResult | None) -> None:
    found = result.data if result is not None and result.ok and result.data else {}
    for key in beside.keys:
        answer[key] = found.get(key)


# The one batch of this process: every live probe registers with it, and the context announces to it.
LIVE_BATCH = LiveBatch()
