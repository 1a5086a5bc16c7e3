"""Entry point of a probe child process (see doctor.children.child). Not for direct use.

Two modes:
- `MODULE:FUNCTION`: call one function with the JSON object on stdin, print its result.
- `--stages`: batch mode. Import the `preload` modules once (e.g. torch, ~2-4 s), then fork one worker
  per stage so each stage starts with them already imported, run the stages concurrently, and print
  all their results together. Forking is safe here because nothing has touched CUDA yet: the
  preload is a plain `import`, and every CUDA context is created in a worker.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import sys
import time
import traceback
import warnings
from typing import Any

from doctor.children import child
from doctor.children.child import RESULT_MARKER, STAGES_ARG


def _call(target: str, args: dict[str, Any]) -> dict[str, Any]:
    module_name, func_name = target.split(":", 1)
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        result = func(args)
    except BaseException as exc:  # the whole point: report any failure as data
        traceback.print_exc(file=sys.stderr)
        result = {"__error__": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]}
    return result if isinstance(result, dict) else {"value": result}


def _emit(real_stdout: Any, result: dict[str, Any]) -> None:
    real_stdout.write(RESULT_MARKER + json.dumps(result, default=str) + "\n")
    real_stdout.flush()


def _preload(modules: list[str]) -> None:
    with child.cyclic_gc_paused():
        _import_each(modules)


def _import_each(modules: list[str]) -> None:
    for name in modules:
        start = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                importlib.import_module(name)
            except BaseException as exc:  # the stage that needs it imports it again and reports the error
                print(f"preloading {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            else:
                child.PRELOAD_SECONDS[name] = round(time.monotonic() - start, 3)
        child.PRELOAD_WARNINGS.extend(str(w.message).strip()[:600] for w in caught)


def _fork_stage(target: str, args: dict[str, Any]) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(read_fd)
        code = 0
        try:
            result = _call(target, args)
            data = json.dumps(result, default=str).encode()
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view) :]
        except BaseException:
            code = 1
        finally:
            sys.stderr.flush()
            os._exit(code)  # no atexit/CUDA teardown: a stuck GPU thread must not keep the worker alive
    os.close(write_fd)
    return pid, read_fd


def _run_forked(stages: dict[str, list[Any]], deadline: float) -> dict[str, dict[str, Any]]:
    started = time.monotonic()
    running: dict[int, tuple[str, int]] = {}  # read fd -> (stage, pid)
    buffers: dict[str, bytearray] = {}
    for name, (target, args) in stages.items():
        pid, fd = _fork_stage(target, args)
        running[fd] = (name, pid)
        buffers[name] = bytearray()
    results: dict[str, dict[str, Any]] = {}
    while running:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select(list(running), [], [], left)
        for fd in ready:
            name, pid = running[fd]
            chunk = os.read(fd, 1 << 16)
            if chunk:
                buffers[name] += chunk
                continue
            os.close(fd)
            del running[fd]
            _, status = os.waitpid(pid, 0)
            entry: dict[str, Any] = {"seconds": round(time.monotonic() - started, 3)}
            if os.WIFSIGNALED(status):
                entry["signal"] = os.WTERMSIG(status)
            else:
                entry["status"] = os.WEXITSTATUS(status)
                try:
                    entry["result"] = json.loads(bytes(buffers[name]) or b"null")
                except json.JSONDecodeError:
                    entry["result"] = None
            results[name] = entry
    for fd, (name, pid) in running.items():  # past the deadline: hung
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass
        os.close(fd)
        results[name] = {"timeout": True, "seconds": round(time.monotonic() - started, 3)}
    return results


def _run_in_turn(stages: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    results = {}
    for name, (target, args) in stages.items():
        start = time.monotonic()
        result = _call(target, args)
        results[name] = {"result": result, "status": 0, "seconds": round(time.monotonic() - start, 3)}
    return results


def batch_main(request: dict[str, Any]) -> dict[str, Any]:
    start = time.monotonic()
    timeout = float(request.get("timeout_s") or 60.0)
    deadline = start + max(0.5, timeout - 0.5)  # answer before the parent's own deadline
    _preload(list(request.get("preload") or ()))
    stages = dict(request.get("stages") or {})
    if hasattr(os, "fork"):
        results = _run_forked(stages, deadline)
    else:
        results = _run_in_turn(stages)
    return {
        "stages": results,
        "preload_seconds": child.PRELOAD_SECONDS,
        "seconds": round(time.monotonic() - start, 3),
    }


def main() -> None:
    target = sys.argv[1]
    request = json.loads(sys.stdin.read() or "{}")
    # Libraries print banners and warnings to stdout; keep our result line unambiguous.
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    if target == STAGES_ARG:
        _emit(real_stdout, batch_main(request))
        sys.stderr.flush()
        os._exit(0)  # the workers are reaped; skip interpreter teardown of what the preload imported
    result = _call(target, request)
    sys.stdout = real_stdout
    _emit(real_stdout, result)
    sys.stderr.flush()
    # The result is out. Interpreter teardown of torch + transformers takes about a second on two cores,
    # and a thread stuck in CUDA (a hung GEMM) would make it wait forever: leave without it. Every
    # function run here closes its own files and removes its own temporary folders.
    os._exit(0)


if __name__ == "__main__":
    main()
