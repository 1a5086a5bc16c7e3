"""Append-only results.jsonl: one JSON object per trial line, flushed and fsync'd before the next trial.

Survives the faults a long sweep meets:
- SIGKILL / power loss mid-write → at most a torn last line; `open_for_append` cuts it off (warning);
- disk full (ENOSPC) → the partial line is truncated away, a clear RunFailed is raised, the file
  stays valid JSON lines;
- Ctrl-C during a write → the SIGINT is held until the line is complete.
- a row that is valid JSON but not a result row (wrong types, a hand edit, a row from something
  else) → skipped with a warning naming the line and field; it never reaches the summary;
- a symlink planted as results.jsonl → refused (O_NOFOLLOW), never appended through.
Every row is scrubbed of secrets before it is written (a server may echo the API key into its text).
Resume: the latest row per `trial_key` wins; rows with status ok/skipped are done, oom/error (and
skips caused by an earlier OOM) are retried.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from doctor.report.redact import Redactor
from run_plan import safe_files
from run_plan.errors import RunFailed

RESULTS_FILE = "results.jsonl"
RETRY_STATUSES = frozenset({"oom", "error"})
STATUSES = frozenset({"ok", "oom", "error", "skipped"})


class TornResultsWarning(UserWarning):
    """results.jsonl ended in a partial line (a killed run); it was cut off."""


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Delay Ctrl-C until the current line is fully written (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[object] = []
    previous = signal.signal(signal.SIGINT, lambda *args: pending.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            raise KeyboardInterrupt


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def row_problem(row: dict[str, Any]) -> str | None:
    """Why `row` is not a result row the summary can use (None when it is). Checks the fields that
    resume, the summary and the heatmap read."""
    if not isinstance(row.get("trial_key"), str) or not row["trial_key"]:
        return "trial_key is not a string"
    if row.get("status") not in STATUSES:
        return f"status {str(row.get('status'))[:40]!r} is not one of {', '.join(sorted(STATUSES))}"
    length = row.get("context_tokens")
    if isinstance(length, bool) or not isinstance(length, int) or not 0 < length < 2**40:
        return "context_tokens is not a positive integer"
    control = row.get("control", False)
    if not isinstance(control, bool):
        return "control is not true/false"
    depth = row.get("depth_percent")
    if not control and not (isinstance(depth, (int, float)) and _is_number(depth) and 0 <= depth <= 100):
        return "depth_percent is not a number in 0-100"
    if not isinstance(row.get("correct", False), bool):
        return "correct is not true/false"
    if row.get("failure_class") is not None and not isinstance(row["failure_class"], str):
        return "failure_class is not a string"
    if row.get("seconds") is not None and not _is_number(row["seconds"]):
        return "seconds is not a number"
    if row.get("trial") is not None and (isinstance(row["trial"], bool) or not isinstance(row["trial"], int)):
        return "trial is not an integer"
    return None


def read_rows(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """All complete, well-formed rows. A torn or unparsable LAST line is dropped with a warning (and cut
    from the file when `repair`); an unparsable or malformed line elsewhere is skipped with a warning."""
    if not path.exists() and not safe_files.is_symlink(path):
        return []
    try:
        data = safe_files.read_bytes(path)
    except OSError as exc:
        raise RunFailed(f"cannot read {path}: {exc.strerror or exc}") from None
    rows: list[dict[str, Any]] = []
    good_end = 0
    position = 0
    lines = data.split(b"\n")
    for index, raw in enumerate(lines):
        is_last = index == len(lines) - 1
        line_end = position + len(raw) + (0 if is_last else 1)
        if raw.strip():
            try:
                row = json.loads(raw)
                if not isinstance(row, dict) or is_last:  # a last line without "\n" was never finished
                    raise ValueError("incomplete line")
                problem = row_problem(row)
                if problem is None:
                    rows.append(row)
                else:
                    warnings.warn(
                        f"{path}: skipped line {index + 1}, not a result row ({problem})",
                        TornResultsWarning,
                        stacklevel=2,
                    )
                good_end = line_end
            except (ValueError, RecursionError):
                if is_last or all(not rest.strip() for rest in lines[index + 1 :]):
                    warnings.warn(
                        f"{path}: dropped a torn last line ({len(raw)} bytes) left by an interrupted run",
                        TornResultsWarning,
                        stacklevel=2,
                    )
                    if repair:
                        with open(path, "r+b") as handle:
                            handle.truncate(good_end)
                            os.fsync(handle.fileno())
                    break
                warnings.warn(
                    f"{path}: skipped unreadable line {index + 1}", TornResultsWarning, stacklevel=2
                )
                good_end = line_end
        else:
            good_end = line_end if not is_last else good_end
        position = line_end
    return rows


def latest_by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = row.get("trial_key")
        if isinstance(key, str):
            latest[key] = row
    return latest


def is_done(row: dict[str, Any]) -> bool:
    if row.get("status") in RETRY_STATUSES:
        return False
    return not (row.get("status") == "skipped" and row.get("skip_reason") == "after_oom")


class ResultsStore:
    """The run directory's results.jsonl, opened for durable appends."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / RESULTS_FILE
        self._redactor: Redactor | None = None  # built on the first append (it reads the environment)

    def load(self, *, repair: bool = True) -> list[dict[str, Any]]:
        return read_rows(self.path, repair=repair)

    def append(self, row: dict[str, Any]) -> None:
        if self._redactor is None:
            self._redactor = Redactor()
        line = (
            json.dumps(self._redactor.apply(row), ensure_ascii=False, sort_keys=False, allow_nan=False) + "\n"
        ).encode("utf-8")
        with _sigint_held():
            try:
                fd = safe_files.open_append(self.path)
            except OSError as exc:
                raise RunFailed(
                    f"cannot write {self.path}: {exc.strerror or exc}",
                    hint="Fix the problem, then rerun the same command with --resume.",
                ) from None
            try:
                before = os.fstat(fd).st_size
                try:
                    view = memoryview(line)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                    os.fsync(fd)
                except OSError as exc:
                    # Leave only whole lines behind, whatever made the write fail.
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, before)
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                        raise RunFailed(
                            f"disk full while writing {self.path}; every finished trial is saved",
                            hint="Free some space, then rerun the same command with --resume.",
                        ) from None
                    raise RunFailed(
                        f"cannot write {self.path}: {exc.strerror or exc}",
                        hint="Fix the problem, then rerun the same command with --resume.",
                    ) from None
            finally:
                os.close(fd)
