"""Run a function in a child Python process with a timeout, and get its JSON result back.

Why: importing torch, bitsandbytes, transformers or triton can hang, segfault or take seconds.
In a child, a hang is killed at the timeout and a crash is an exit status; either way the
doctor gets a value (an error description) and the rest of the report still prints.

The child runs `python -m doctor.children._child_main MODULE:FUNCTION`, reads a JSON argument
object on stdin and prints one JSON object on its last stdout line.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from doctor.unavailable import Unavailable, UnavailableKind
from run_plan.safe_files import tool_cache_dir

RESULT_MARKER = "@@niah-doctor-result@@"
STAGES_ARG = "--stages"  # _child_main's batch mode: preload, then fork one worker per stage
# Set by _child_main in batch mode: what preloading (e.g. `import torch`) warned and how long it took,
# so a stage that finds the module already imported can still report them.
PRELOAD_WARNINGS: list[str] = []
PRELOAD_SECONDS: dict[str, float] = {}
_ALLOWED_PREFIXES = ("doctor.", "niah_run.", "run_plan.")


@dataclass(frozen=True)
class ChildResult:
    ok: bool
    data: dict[str, Any] | None
    error: str | None  # one line: what went wrong
    returncode: int | None
    stderr_tail: str
    seconds: float

    def as_unavailable(self, what: str) -> Unavailable:
        kind: UnavailableKind = "timeout" if self.returncode is None else "error"
        return Unavailable(reason=f"{what}: {self.error}", kind=kind, detail=self.stderr_tail or None)


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def run_in_child(
    function: str,
    args: dict[str, Any] | None = None,
    *,
    timeout_s: float = 60.0,
    env: dict[str, str] | None = None,
) -> ChildResult:
    """Call `module:function(args) -> dict` in a fresh interpreter; never raises for child failures."""
    module = function.split(":", 1)[0]
    if not module.startswith(_ALLOWED_PREFIXES):
        raise ValueError(f"child functions must live in this project, not {module!r}")
    return _run_raw([function], args or {}, timeout_s=timeout_s, env=env, shown_timeout=timeout_s)


def run_stages_in_child(
    stages: dict[str, tuple[str, dict[str, Any]]],
    *,
    timeout_s: float = 60.0,
    preload: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> dict[str, ChildResult]:
    """Run several `module:function(args)` stages in ONE child that imports `preload` once, then forks a
    worker per stage (concurrently; each pays only its own work, not another `import torch`).

    Every stage gets its own ChildResult: a stage that hangs past `timeout_s` or crashes is that stage's
    error, and the others still answer. If the child itself dies (a preload that segfaults or hangs),
    every stage gets that error. Where `os.fork` does not exist the stages run one after another.
    """
    for function in (f for f, _ in stages.values()):
        if not function.split(":", 1)[0].startswith(_ALLOWED_PREFIXES):
            raise ValueError(f"child functions must live in this project, not {function!r}")
    request = {
        "stages": {name: [fn, args] for name, (fn, args) in stages.items()},
        "preload": list(preload),
        "timeout_s": timeout_s,
    }
    # The child stops waiting for its stages at timeout_s and reports; the grace covers its own start-up.
    batch = _run_raw([STAGES_ARG], request, timeout_s=timeout_s + 2.0, env=env, shown_timeout=timeout_s)
    out: dict[str, ChildResult] = {}
    for name in stages:
        if not batch.ok or batch.data is None:
            out[name] = batch
            continue
        entry = (batch.data.get("stages") or {}).get(name)
        if not isinstance(entry, dict):
            out[name] = ChildResult(
                False, None, "the stage returned nothing", batch.returncode, batch.stderr_tail, batch.seconds
            )
            continue
        seconds = float(entry.get("seconds") or batch.seconds)
        if entry.get("timeout"):
            out[name] = ChildResult(
                False,
                None,
                f"did not finish within {timeout_s:g} s (hung; killed)",
                None,
                batch.stderr_tail,
                seconds,
            )
        elif entry.get("signal"):
            out[name] = ChildResult(
                False,
                None,
                f"crashed with {_signal_name(-int(entry['signal']))}",
                -int(entry["signal"]),
                batch.stderr_tail,
                seconds,
            )
        elif not isinstance(entry.get("result"), dict):
            out[name] = ChildResult(
                False,
                None,
                f"exited with status {entry.get('status')} and no result",
                entry.get("status"),
                batch.stderr_tail,
                seconds,
            )
        elif "__error__" in entry["result"]:
            out[name] = ChildResult(
                False, entry["result"], str(entry["result"]["__error__"]), 0, batch.stderr_tail, seconds
            )
        else:
            out[name] = ChildResult(True, entry["result"], None, 0, batch.stderr_tail, seconds)
    return out


# Modules whose missing bytecode makes a child slow: torch alone is ~1,600 modules.
_HEAVY_MODULES = ("torch", "transformers")
BYTECODE_CACHE_OFF = "NIAH_DOCTOR_PYCACHE"  # "0": never give children a bytecode cache of their own


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """For a child's imports and model construction: no cyclic garbage collection while they run.

    `import torch` + transformers + building a model allocate about a million objects and almost no
    garbage; the collector walks all of them again and again while they pile up (about 0.5 s of a 4 s
    import on two cores). Afterwards they are frozen (they live until the child exits), so later
    collections skip them; reference counting frees everything as before, and collection resumes for
    whatever runs next.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def bytecode_cache_env(
    env: Mapping[str, str | None], modules: tuple[str, ...] = _HEAVY_MODULES
) -> dict[str, str | None]:
    """Environment changes that let a child import torch from compiled bytecode ({} when none are needed).

    Some images ship site-packages without `.pyc` files and set PYTHONDONTWRITEBYTECODE=1 (or keep
    them read-only), so every `import torch` compiles all its source again: on one H200 host 2.9 s for
    torch and 4 s more for torch._dynamo. Then the child writes its bytecode to the doctor's own
    cache (PYTHONPYCACHEPREFIX) and reads it from there next time; site-packages is never written.
    None as a value means "remove this variable".
    """
    if env.get(BYTECODE_CACHE_OFF) == "0" or env.get("PYTHONPYCACHEPREFIX"):
        return {}
    for name in modules:
        source = package_source(name)
        if source is None or has_shipped_bytecode(source):
            continue
        folder = os.path.dirname(source)
        if env.get("PYTHONDONTWRITEBYTECODE") or not os.access(folder, os.W_OK):
            return {"PYTHONPYCACHEPREFIX": str(tool_cache_dir("pycache")), "PYTHONDONTWRITEBYTECODE": None}
    return {}


def package_source(name: str) -> str | None:
    """The `__init__.py` an import of `name` would run (found without importing it), or None."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = spec.origin if spec is not None else None
    return origin if origin and origin.endswith(".py") else None


def has_shipped_bytecode(source: str) -> bool:
    """Is there a compiled `.pyc` for this source file beside it (in its `__pycache__`)?"""
    compiled = os.path.basename(importlib.util.cache_from_source(source))
    return os.path.exists(os.path.join(os.path.dirname(source), "__pycache__", compiled))


def _run_raw(
    argv: list[str],
    payload: dict[str, Any],
    *,
    timeout_s: float,
    env: dict[str, str] | None,
    shown_timeout: float,
) -> ChildResult:
    child_env: dict[str, str | None] = dict(os.environ if env is None else env)
    # The child must import *this* doctor even when it runs from a source tree that is not installed.
    project_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, child_env.get("PYTHONPATH")) if p)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    # Keep the child quiet and offline unless the parent explicitly allowed the network.
    child_env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    child_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    child_env.update(bytecode_cache_env(child_env))
    given = {name: value for name, value in child_env.items() if value is not None}  # None: removed
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "doctor.children._child_main", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=given,
            text=True,
            start_new_session=True,  # own process group: kill it whole
        )
    except OSError as exc:
        return ChildResult(False, None, f"could not start a Python child: {exc}", -1, "", 0.0)
    try:
        out, err = proc.communicate(json.dumps(payload), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        return ChildResult(
            False,
            None,
            f"did not finish within {shown_timeout:g} s (hung; killed)",
            None,
            _tail(err),
            time.monotonic() - start,
        )
    seconds = time.monotonic() - start
    data = _parse_payload(out)
    if proc.returncode < 0:
        return ChildResult(
            False, data, f"crashed with {_signal_name(proc.returncode)}", proc.returncode, _tail(err), seconds
        )
    if data is None:
        return ChildResult(
            False,
            None,
            f"exited with status {proc.returncode} and no result",
            proc.returncode,
            _tail(err),
            seconds,
        )
    if "__error__" in data:
        return ChildResult(False, data, str(data["__error__"]), proc.returncode, _tail(err), seconds)
    return ChildResult(True, data, None, proc.returncode, _tail(err), seconds)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _parse_payload(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            try:
                value = json.loads(line[len(RESULT_MARKER) :])
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else {"value": value}
    return None


def _tail(text: str | None, lines: int = 12) -> str:
    if not text:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def selftest_child(args: dict[str, Any]) -> dict[str, Any]:
    """A stage that sleeps, dies by a signal or answers, as told: proves the child machinery itself
    (`doctor` cannot tell a hung torch from a hung child runner otherwise)."""
    if args.get("sleep_s"):
        time.sleep(float(args["sleep_s"]))
    if args.get("signal"):
        os.kill(os.getpid(), int(args["signal"]))
    if args.get("raise"):
        raise RuntimeError(str(args["raise"]))
    if args.get("linger_s"):  # a thread that outlives the answer, like a GEMM stuck in CUDA
        import threading

        threading.Thread(target=time.sleep, args=(float(args["linger_s"]),), daemon=False).start()
    return {
        "echo": args.get("echo"),
        "pid": os.getpid(),
        "preloaded": sorted(m for m in args.get("expect_preloaded", ()) if m in sys.modules),
    }
