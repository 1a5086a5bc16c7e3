"""The run folder as a shared, possibly hostile place: what `niah run` / `niah report` may write there.

One gate for every run-folder file:
- `prepare` refuses `/`, a file, a folder that holds other people's files and no niah run, a run
  folder with a symlink planted under one of our file names, `--resume` on a folder with no run in
  it, and a folder another `niah run` is writing to (an advisory `flock` on `.niah.lock`);
- `write_json` / `write_text` write atomically and never through a symlink (run_plan.safe_files),
  scrubbing secrets first (the Redactor), so a full disk leaves the old file, never a 0-byte one.
Errors are one line: UsageError (exit 2) for a folder the user should not have named, RunFailed
(exit 1) when the disk or another process is the cause.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from doctor.report.redact import Redactor
from run_plan import safe_files
from run_plan.errors import RunFailed, UsageError
from run_plan.text import inert

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.jsonl"
LOCK_FILE = ".niah.lock"
# Every name a run writes. A symlink under one of them is refused (we would write through it).
RUN_FILES = (
    CONFIG_FILE,
    RESULTS_FILE,
    "preflight.json",
    "preflight.md",
    "summary.json",
    "summary.md",
    "heatmap.png",
    LOCK_FILE,
)
_WRITE_PROBE = ".niah-write-test"

# Locks this process holds, by resolved folder: a second run in the same process (tests, an API
# caller) reuses it; another process is refused.
_HELD: dict[str, int] = {}


def default_out_dir(model: str) -> Path:
    """niah-runs/<model>-<local time>: a new folder per run when --out is not given."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model).strip("-") or "model"
    return Path("niah-runs") / f"{slug}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def holds_a_run(folder: Path) -> bool:
    """A niah run folder: results.jsonl, or a config.json that niah wrote (it names the harness)."""
    if (folder / RESULTS_FILE).is_file() and not safe_files.is_symlink(folder / RESULTS_FILE):
        return True
    config = folder / CONFIG_FILE
    if not config.is_file() or safe_files.is_symlink(config):
        return False
    try:
        doc = json.loads(safe_files.read_bytes(config, limit=16 << 20))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and str(doc.get("harness_version", "")).startswith("niah-doctor")


def refuse_planted_symlinks(folder: Path) -> None:
    """A received run folder may hold `summary.json -> ~/.bashrc`: never write through such a link."""
    for name in RUN_FILES:
        if safe_files.is_symlink(folder / name):
            raise UsageError(
                f"{folder / name} is a symbolic link; refusing to write through it",
                hint="Remove the link (a run folder holds only regular files), then rerun.",
            )


def _is_root(folder: Path) -> bool:
    try:
        resolved = folder.resolve()
    except (OSError, RuntimeError):
        return False
    return resolved == Path(resolved.anchor)


def prepare(out: Path, *, resume: bool) -> Path:
    """Validate --out, create it, lock it for this run. Returns the folder: one we can write that is new,
    empty or a niah run; never `/` or someone else's folder; an existing results file needs --resume, and
    --resume needs a run; one `niah run` at a time per folder."""
    if not str(out).strip():
        raise UsageError("--out is empty", hint="Give a folder name for the run directory.")
    if _is_root(out):
        raise UsageError(
            f"--out {out} is the filesystem root", hint="Give a new folder, e.g. --out runs/first."
        )
    if out.exists() and not out.is_dir():
        raise UsageError(
            f"--out {out} is a file, not a folder", hint="Give a folder name for the run directory."
        )
    is_run = out.is_dir() and holds_a_run(out)
    if out.is_dir() and not is_run:
        try:
            others = sorted(p.name for p in out.iterdir() if p.name not in (_WRITE_PROBE, LOCK_FILE))
        except OSError as exc:
            raise UsageError(f"--out {out} cannot be listed: {exc.strerror or exc}") from None
        if others:
            if resume:
                raise UsageError(
                    f"--resume: {out} holds no niah run (no results.jsonl or niah config.json)",
                    hint="Check the folder name; --out must be the folder of the earlier run.",
                )
            shown = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
            raise UsageError(
                f"--out {out} already holds other files ({shown}) and is not a niah run folder; "
                "refusing to write into it",
                hint="Give a new or empty folder for the run.",
            )
    if resume and not is_run:
        raise UsageError(
            f"--resume: {out} holds no niah run to continue",
            hint="Check the folder name, or drop --resume to start a new run there.",
        )
    if is_run and not resume and (out / RESULTS_FILE).exists():
        raise UsageError(
            f"{out} already holds results.jsonl from an earlier run",
            hint="Add --resume to continue it, or choose a new --out folder.",
        )
    if out.is_dir():
        refuse_planted_symlinks(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / _WRITE_PROBE
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        raise UsageError(
            f"--out {out} is not writable: {exc.strerror or exc}", hint="Choose a folder you can write to."
        ) from None
    lock(out)
    return out


def lock(folder: Path) -> None:
    """Hold an exclusive lock on folder/.niah.lock until this process ends (or `unlock`)."""
    import fcntl

    key = str(folder.resolve())
    if key in _HELD:
        return
    try:
        fd = safe_files.open_append(folder / LOCK_FILE, mode=0o644)
    except OSError as exc:
        raise RunFailed(f"cannot create {folder / LOCK_FILE}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunFailed(
                f"another niah run is writing to {folder} right now",
                hint="Wait for it to finish (or stop it), or give this run its own --out.",
            ) from None
        raise RunFailed(f"cannot lock {folder / LOCK_FILE}: {exc.strerror or exc}") from None
    os.set_inheritable(fd, False)
    _HELD[key] = fd


def unlock(folder: Path) -> None:
    try:
        fd = _HELD.pop(str(folder.resolve()), None)
    except (OSError, RuntimeError):
        return
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def write_text(path: Path, text: str) -> None:
    """Scrubbed, atomic, never through a symlink. Disk full / read-only → RunFailed (exit 1)."""
    try:
        safe_files.write_atomic_text(path, Redactor().scrub(text))
    except OSError as exc:
        raise RunFailed(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="Free some space or fix the folder's permissions, then rerun with --resume.",
        ) from None


def write_json(path: Path, doc: Any) -> None:
    """A JSON document (secrets scrubbed, NaN/Infinity written as strings so it stays valid JSON)."""
    text = json.dumps(_finite(Redactor().apply(doc)), indent=2, default=str, allow_nan=False) + "\n"
    try:
        safe_files.write_atomic_text(path, text)
    except OSError as exc:
        raise RunFailed(
            f"cannot write {path}: {exc.strerror or exc}",
            hint="Free some space or fix the folder's permissions, then rerun with --resume.",
        ) from None


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


@contextlib.contextmanager
def warnings_as_lines(limit: int = 20) -> Iterator[None]:
    """Python warnings raised inside (skipped or torn results rows) become `warning: …` lines on
    stderr: one line each, scrubbed, never a source-code excerpt."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    redactor = Redactor()
    for warning in caught[:limit]:
        print(inert(redactor.scrub(f"warning: {warning.message}")), file=sys.stderr, flush=True)
    if len(caught) > limit:
        print(f"warning: … and {len(caught) - limit} more", file=sys.stderr, flush=True)
