"""Run a function in a child Python process with a timeout, and get its JSON result back.

Why: importing torch, bitsandbytes, transformers or triton can hang, segfault or take seconds.
In a child, a hang is killed at the timeout and a crash is an exit status; either way the
doctor gets a value (an error description) and the rest of the report still prints.

The child runs `python -m doctor.probes._child_main MODULE:FUNCTION`, reads a JSON argument
object on stdin and prints one JSON object on its last stdout line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from doctor.probes import Unavailable

RESULT_MARKER = "@@niah-doctor-result@@"
_ALLOWED_PREFIXES = ("doctor.", "niah_run.")


@dataclass(frozen=True)
class ChildResult:
    ok: bool
    data: dict[str, Any] | None
    error: str | None  # one line: what went wrong
    returncode: int | None
    stderr_tail: str
    seconds: float

    def as_unavailable(self, what: str) -> Unavailable:
        kind = "timeout" if self.returncode is None else "error"
        return Unavailable(reason=f"{what}: {self.error}", kind=kind, detail=self.stderr_tail or None)


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def run_in_child(function: str, args: dict[str, Any] | None = None, *, timeout_s: float = 60.0,
                 env: dict[str, str] | None = None) -> ChildResult:
    """Call `module:function(args) -> dict` in a fresh interpreter; never raises for child failures."""
    module = function.split(":", 1)[0]
    if not module.startswith(_ALLOWED_PREFIXES):
        raise ValueError(f"child functions must live in this project, not {module!r}")
    child_env = dict(os.environ if env is None else env)
    # The child must import *this* doctor even when it runs from a source tree that is not installed.
    project_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, child_env.get("PYTHONPATH")) if p)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    # Keep the child quiet and offline unless the parent explicitly allowed the network.
    child_env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    child_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "doctor.probes._child_main", function],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=child_env, text=True, start_new_session=True,  # own process group: kill it whole
        )
    except OSError as exc:
        return ChildResult(False, None, f"could not start a Python child: {exc}", -1, "", 0.0)
    try:
        out, err = proc.communicate(json.dumps(args or {}), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        return ChildResult(False, None, f"did not finish within {timeout_s:g} s (hung; killed)", None,
                           _tail(err), time.monotonic() - start)
    seconds = time.monotonic() - start
    payload = _parse_payload(out)
    if proc.returncode < 0:
        return ChildResult(False, payload, f"crashed with {_signal_name(proc.returncode)}",
                           proc.returncode, _tail(err), seconds)
    if payload is None:
        return ChildResult(False, None, f"exited with status {proc.returncode} and no result",
                           proc.returncode, _tail(err), seconds)
    if "__error__" in payload:
        return ChildResult(False, payload, str(payload["__error__"]), proc.returncode, _tail(err), seconds)
    return ChildResult(True, payload, None, proc.returncode, _tail(err), seconds)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _parse_payload(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            try:
                value = json.loads(line[len(RESULT_MARKER):])
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else {"value": value}
    return None


def _tail(text: str | None, lines: int = 12) -> str:
    if not text:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])
