"""Share independent CPU work between this process and one forked copy of it.

The sizing child's compute is meta-device forwards: every op goes through torch's Python meta kernels, one
core at a time, while a second core sits idle (the CI box and most laptops have at least two). Forking
after the model is built gives a second worker that already holds the imports and the model, for free.

Fork is only used where it is safe: a POSIX fork, no other Python thread alive (a lock held by another
thread would stay held in the copy), and nothing on CUDA (the sizing child never touches a GPU). The copy
leaves with `os._exit`, so no atexit handler or finalizer runs twice. Whatever goes wrong in the copy
(an exception, a crash, a result that does not come back whole), this process computes the copy's share
itself, so the answer, and any exception, is exactly what a plain loop gives.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

Item = TypeVar("Item")
Result = TypeVar("Result")


def can_fork() -> bool:
    """A fork now would copy a process that has no other thread and more than one core to run on."""
    return hasattr(os, "fork") and (os.cpu_count() or 1) >= 2 and threading.active_count() == 1


def map_shared(
    func: Callable[[Item], Result], items: Sequence[Item], *, fork: bool | None = None
) -> list[Result]:
    """[func(x) for x in items], with every other item computed in a forked copy of this process.

    `fork=None` decides by `can_fork()`; False runs the plain loop (the reference the tests compare with).
    Results must pickle. Interleaving balances the share when the costly items sit together.
    """
    use_fork = can_fork() if fork is None else fork and hasattr(os, "fork")
    if not use_fork or len(items) < 2:
        return [func(item) for item in items]
    theirs = list(range(1, len(items), 2))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the copy: compute its share, send it, leave without any teardown
        os.close(read_fd)
        code = 0
        try:
            data = pickle.dumps([func(items[i]) for i in theirs])
            view = memoryview(data)
            while view:
                view = view[os.write(write_fd, view) :]
        except BaseException:  # the parent computes this share itself and meets the same exception
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    results: dict[int, Result] = {}
    try:
        for i in range(0, len(items), 2):
            results[i] = func(items[i])
    except BaseException:  # this share failed: the copy's answer is not needed any more
        os.kill(pid, signal.SIGKILL)
        os.close(read_fd)
        os.waitpid(pid, 0)
        raise
    received = _read_all(read_fd)
    _, status = os.waitpid(pid, 0)
    shared = _unpickle(received) if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else None
    if shared is not None and len(shared) == len(theirs):
        results.update(zip(theirs, cast("list[Result]", shared)))
    else:
        results.update((i, func(items[i])) for i in theirs)
    return [results[i] for i in range(len(items))]


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _unpickle(data: bytes) -> list[object] | None:
    try:
        value = pickle.loads(data)  # noqa: S301 - bytes from our own forked copy, never from outside
    except Exception:  # noqa: BLE001 - a copy that died mid-write: recompute its share
        return None
    return value if isinstance(value, list) else None
