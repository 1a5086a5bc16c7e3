"""Files in folders we do not fully control (run folders someone sent us, shared scratch space).

- `write_atomic`: temp file in the same folder + fsync + `os.replace`, so a reader (or a full disk, or
  a kill) leaves the old content or the new one, never a 0-byte or half file. `os.replace` swaps a
  planted symlink itself and never writes through it to its target.
- `open_append` / `read_bytes`: `O_NOFOLLOW`, so a symlink planted under our file name is refused
  instead of followed (a symlink to `~/.bashrc` named results.jsonl must not be appended to).
- `is_symlink`: the check run-folder code does before anything else writes there.
- `tool_cache_dir`: where the tools keep what they may recompute (sizing, Triton builds, bytecode).
Errors are `OSError`s (`SymlinkRefused` for the symlink case); callers turn them into one-line messages.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

__all__ = [
    "SymlinkRefused",
    "is_symlink",
    "open_append",
    "read_bytes",
    "read_text_file",
    "tool_cache_dir",
    "write_atomic",
    "write_atomic_text",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def tool_cache_dir(*parts: str) -> Path:
    """`$XDG_CACHE_HOME/niah-doctor/<parts>` (default `~/.cache/...`): safe to delete, rebuilt on demand."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "niah-doctor", *parts)


class SymlinkRefused(OSError):
    """A file we were about to read or write is a symbolic link."""

    def __init__(self, path: Path | str) -> None:
        super().__init__(errno.ELOOP, "is a symbolic link; refusing to follow it", str(path))


def is_symlink(path: Path | str) -> bool:
    try:
        return Path(path).is_symlink()
    except OSError:
        return False


def _fsync_folder(folder: Path) -> None:
    # The rename itself must reach the disk, or a crash can bring the old (or no) file back.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | _CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path | str, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` in one step. Raises OSError (ENOSPC, EROFS, EACCES, ...)."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    fd, staging = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode & ~_umask())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staging, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise
    _fsync_folder(folder)


def write_atomic_text(path: Path | str, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def open_append(path: Path | str, *, mode: int = 0o644) -> int:
    """An fd for appending to `path` (created if missing), refusing a symlink. The caller closes it."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SymlinkRefused(path) from None
        raise


def read_bytes(path: Path | str, *, limit: int | None = None) -> bytes:
    """The file's bytes (at most `limit`), refusing a symlink and anything that is not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SymlinkRefused(path) from None
        raise
    with os.fdopen(fd, "rb") as handle:
        import stat

        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(errno.EINVAL, "is not a regular file", str(path))
        return handle.read() if limit is None else handle.read(limit)


# A settings file, a plan, a report or a model's config is kilobytes: far beyond this is not one.
TEXT_FILE_LIMIT = 64 << 20


def read_text_file(path: Path | str, *, limit: int = TEXT_FILE_LIMIT) -> str:
    """A file someone named (a --config, --plan or --report file, a model's config.json), as UTF-8 text:
    symlinks followed (they are the user's own), but only a regular file of at most `limit` bytes. A FIFO
    would block the open and the read forever, /dev/zero never end: each is an OSError instead, as is
    a folder (IsADirectoryError), for the caller's one-line message. UnicodeDecodeError as read_text."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC)  # a FIFO's open does not wait for a writer
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "is not a regular file (a pipe or a device)", str(path))
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"is larger than {limit >> 20} MiB", str(path))
    return data.decode("utf-8")
