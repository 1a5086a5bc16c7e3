"""Append-only results.jsonl: one JSON object per trial line, flushed and fsync'd before the next trial.

Survives the faults a long sweep meets:
- SIGKILL / power loss mid-write → at most a torn last line; `open_for_append` cuts it off (warning);
- disk full (ENOSPC) → the partial line is truncated away, a clear RunFailed is raised, the file
  stays valid JSON lines;
- Ctrl-C during a write → the SIGINT is held until the line is complete.
Resume: the latest row per `trial_key` wins; rows with status ok/skipped are done, oom/error (and
skips caused by an earlier OOM) are retried.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from doctor.errors import RunFailed

RESULTS_FILE = "results.jsonl"
RETRY_STATUSES = frozenset({"oom", "error"})


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


def read_rows(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """All complete rows. A torn or unparsable LAST line is dropped with a warning (and cut from the file
    when `repair`); an unparsable line elsewhere is skipped with a warning."""
    if not path.exists():
        return []
    data = path.read_bytes()
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
                rows.append(row)
                good_end = line_end
            except ValueError:
                if is_last or all(not rest.strip() for rest in lines[index + 1:]):
                    warnings.warn(f"{path}: dropped a torn last line ({len(raw)} bytes) left by an interrupted run",
                                  TornResultsWarning, stacklevel=2)
                    if repair:
                        with open(path, "r+b") as handle:
                            handle.truncate(good_end)
                            os.fsync(handle.fileno())
                    break
                warnings.warn(f"{path}: skipped unreadable line {index + 1}", TornResultsWarning, stacklevel=2)
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

    def load(self, *, repair: bool = True) -> list[dict[str, Any]]:
        return read_rows(self.path, repair=repair)

    def append(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, ensure_ascii=False, sort_keys=False, allow_nan=False) + "\n").encode("utf-8")
        with _sigint_held():
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
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
                        raise RunFailed(f"disk full while writing {self.path}; every finished trial is saved",
                                        hint="Free some space, then rerun the same command with --resume.") from None
                    raise RunFailed(f"cannot write {self.path}: {exc.strerror or exc}",
                                    hint="Fix the problem, then rerun the same command with --resume.") from None
            finally:
                os.close(fd)
