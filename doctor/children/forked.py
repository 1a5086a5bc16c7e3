"""Share independent CPU work between this process and forked copies of it.

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
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar, cast

Item = TypeVar("Item")
Result = TypeVar("Result")


def can_fork() -> bool:
    """A fork now would copy a process that has no other thread and more than one core to run on."""
    return hasattr(os, "fork") and (os.cpu_count() or 1) >= 2 and threading.active_count() == 1


_INDEX = struct.Struct("<I")
# A queue of up to 1024 indices is 4 KiB: it fits any pipe's buffer, so it is written whole before the fork.
MAX_QUEUED = 1024


def map_shared(
    func: Callable[[Item], Result], items: Sequence[Item], *, fork: bool | None = None
) -> list[Result]:
    """[func(x) for x in items], computed by this process and a forked copy together.

    Both take the next item from one queue (a pipe of indices: each 4-byte read takes one, atomically),
    so a costly item does not leave the other core idle. `fork=None` decides by `can_fork()`; False runs
    the plain loop (the reference the tests compare with). Results must pickle.
    """
    use_fork = can_fork() if fork is None else fork and hasattr(os, "fork")
    if not use_fork or not 2 <= len(items) <= MAX_QUEUED:
        return [func(item) for item in items]
    queue, queue_writer = os.pipe()
    os.write(queue_writer, b"".join(_INDEX.pack(i) for i in range(len(items))))
    os.close(queue_writer)  # an empty queue now reads as end-of-file in both processes
    copy = start_forked(lambda: {i: func(items[i]) for i in _taken(queue)})
    results: dict[int, Result] = {}
    try:
        for i in _taken(queue):
            results[i] = func(items[i])
    except BaseException:  # this process failed: the copy's answer is not needed any more
        copy.kill()
        raise
    finally:
        os.close(queue)
    shared = copy.result()
    if isinstance(shared, dict):
        results.update(shared)
    # whatever the copy took but did not bring back (it failed or died), in the plain loop's order
    results.update((i, func(items[i])) for i in range(len(items)) if i not in results)
    return [results[i] for i in range(len(items))]


def _taken(queue: int) -> Iterator[int]:
    while len(chunk := os.read(queue, _INDEX.size)) == _INDEX.size:
        yield _INDEX.unpack(chunk)[0]


class ForkedCall(Generic[Result]):
    """A function running in a forked copy of this process; `result()` waits for its value."""

    def __init__(self, pid: int, reader: int) -> None:
        self._pid = pid
        self._reader = reader

    def result(self) -> Result | None:
        """The copy's return value, or None if it raised, crashed or sent back something incomplete."""
        received = _read_all(self._reader)
        _, status = os.waitpid(self._pid, 0)
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            return None
        try:
            return cast("Result", pickle.loads(received))  # noqa: S301 - bytes from our own forked copy
        except Exception:  # noqa: BLE001 - a copy that died mid-write
            return None

    def kill(self) -> None:
        os.kill(self._pid, signal.SIGKILL)
        os.close(self._reader)
        os.waitpid(self._pid, 0)


def start_forked(func: Callable[[], Result]) -> ForkedCall[Result]:
    """Run func() in a forked copy (the caller has checked that forking is safe); the copy leaves with
    os._exit, so nothing registered for exit runs twice."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the copy: compute, send, leave without any teardown
        os.close(reader)
        code = 0
        try:
            data = pickle.dumps(func())
            view = memoryview(data)
            while view:
                view = view[os.write(writer, view) :]
        except BaseException:  # the caller computes it again itself and meets the same exception
            code = 1
        finally:
            os._exit(code)
    os.close(writer)
    return ForkedCall(pid, reader)


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)
