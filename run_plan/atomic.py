"""Write a file so that a reader sees the old content or the new, never half (temp file + rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from run_plan.errors import UsageError


def write_text_atomic(path: Path, text: str) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, path)  # replaces a symlink itself, never writes through it
        finally:
            if os.path.exists(staging):
                os.unlink(staging)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
