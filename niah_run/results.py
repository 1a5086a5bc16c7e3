"""Append-only results.jsonl: one JSON object per trial line, flushed and fsync'd before the next trial.

Survives the faults a long sweep meets:
- SIGKILL / power loss mid-write → at most a torn last line; `open_for_append` cuts it off (warning);
- disk full (ENOSPC) → the partial line is truncated away, a clear RunFailed is raised, the file
  stays valid JSON lines;
- Ctrl-C during a write → the SIGINT is held until the line is complete.
- a row that is valid JSON but not a result row (wrong types, a hand edit, a row from something
  else) → skipped with a warning naming the line and field (`TrialRow.from_json`, the one validator);
  it never reaches the summary;
- a symlink planted as results.jsonl → refused (O_NOFOLLOW), never appended through.
Every row is scrubbed of secrets before it is written (a server may echo the API key into its text).
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
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from doctor.report.redact import Redactor
from niah_run.rows import RowProblem, TrialRow, as_row
from run_plan import safe_files
from run_plan.errors import RunFailed

RESULTS_FILE = "results.jsonl"


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


def read_trial_rows(path: Path, *, repair: bool = False) -> list[TrialRow]:
    """All complete, well-formed rows. A torn or unparsable LAST line is dropped with a warning (and cut
    from the file when `repair`); an unparsable or malformed line elsewhere is skipped with a warning."""
    return [row for _, row in _read(path, repair=repair)]


def read_rows(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """The same rows as read_trial_rows, as the JSON objects the file holds (for scripts that read keys)."""
    return [doc for doc, _ in _read(path, repair=repair)]


def _read(path: Path, *, repair: bool) -> list[tuple[dict[str, Any], TrialRow]]:
    if not path.exists() and not safe_files.is_symlink(path):
        return []
    try:
        data = safe_files.read_bytes(path)
    except OSError as exc:
        raise RunFailed(f"cannot read {path}: {exc.strerror or exc}") from None
    rows: list[tuple[dict[str, Any], TrialRow]] = []
    good_end = 0
    position = 0
    lines = data.split(b"\n")
    for index, raw in enumerate(lines):
        is_last = index == len(lines) - 1
        line_end = position + len(raw) + (0 if is_last else 1)
        if raw.strip():
            try:
                doc = json.loads(raw)
                if not isinstance(doc, dict) or is_last:  # a last line without "\n" was never finished
                    raise ValueError("incomplete line")
                try:
                    rows.append((doc, TrialRow.from_json(doc)))
                except RowProblem as problem:
                    warnings.warn(
                        f"{path}: skipped line {index + 1}, not a result row ({problem})",
                        TornResultsWarning,
                        stacklevel=3,
                    )
                good_end = line_end
            except (ValueError, RecursionError):
                if is_last or all(not rest.strip() for rest in lines[index + 1 :]):
                    warnings.warn(
                        f"{path}: dropped a torn last line ({len(raw)} bytes) left by an interrupted run",
                        TornResultsWarning,
                        stacklevel=3,
                    )
                    if repair:
                        with open(path, "r+b") as handle:
                            handle.truncate(good_end)
                            os.fsync(handle.fileno())
                    break
                warnings.warn(
                    f"{path}: skipped unreadable line {index + 1}", TornResultsWarning, stacklevel=3
                )
                good_end = line_end
        else:
            good_end = line_end if not is_last else good_end
        position = line_end
    return rows


RowT = TypeVar("RowT", TrialRow, Mapping[str, Any])


def latest_by_key(rows: Iterable[RowT]) -> dict[str, RowT]:
    """The last row of each trial key (a retried trial's newest outcome), as given."""
    latest: dict[str, RowT] = {}
    for row in rows:
        key = row.trial_key if isinstance(row, TrialRow) else row.get("trial_key")
        if isinstance(key, str):
            latest[key] = row
    return latest


def is_done(row: TrialRow | Mapping[str, Any]) -> bool:
    return as_row(row).done


class ResultsStore:
    """The run directory's results.jsonl, opened for durable appends."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / RESULTS_FILE
        self._redactor: Redactor | None = None  # built on the first append (it reads the environment)

    def load_rows(self, *, repair: bool = True) -> list[TrialRow]:
        return read_trial_rows(self.path, repair=repair)

    def load(self, *, repair: bool = True) -> list[dict[str, Any]]:
        """The rows as JSON objects (see read_rows)."""
        return read_rows(self.path, repair=repair)

    def append(self, row: TrialRow | Mapping[str, Any]) -> None:
        """Write one row (a JSON object is checked as a row first) and fsync it before returning."""
        doc = row.to_json() if isinstance(row, TrialRow) else dict(row)
        if not isinstance(row, TrialRow):
            TrialRow.from_json(doc)
        if self._redactor is None:
            self._redactor = Redactor()
        line = (
            json.dumps(self._redactor.apply(doc), ensure_ascii=False, sort_keys=False, allow_nan=False) + "\n"
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
