"""Reading secret and PEM files safely: regular files only, bounded in size, and, while the
proxy serves, off the event loop with a deadline.

A FIFO at a secret's path blocks `open()` until some writer appears, and a hung network file
system blocks `read()` for as long as it likes. Either one on the event loop freezes every
request. So a path must lead (after symlinks, as Kubernetes Secret volumes use them) to a
regular file, checked before opening and again on the open descriptor, and the open itself never
waits (`O_NONBLOCK`). What can still hang, a read from a stuck mount, runs in a thread of its own
that the loop waits for only until `READ_TIMEOUT_SECONDS`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

MAX_FILE_BYTES = 1 << 20  # a secret or PEM file this large is a mistake; never read it whole
READ_TIMEOUT_SECONDS = 5.0
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _refuse_unless_regular(mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "a special file")
        raise OSError(errno.EINVAL, f"not a regular file (it is {kind})")


def read_regular(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file at `path`, symlinks followed. OSError (with a `strerror`
    fit to show) when it is missing, not a regular file, or larger than `limit` bytes."""
    _refuse_unless_regular(os.stat(path).st_mode)  # a device is not even opened
    fd = os.open(path, _OPEN_FLAGS)  # never waits for a FIFO's writer
    try:
        _refuse_unless_regular(os.fstat(fd).st_mode)  # swapped between stat and open
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes")
    return b"".join(chunks)


class OffLoop:
    """Runs blocking file work in a thread while the event loop keeps serving, at most one
    piece of work per key (a secret's name) at a time.

    A read that outlives `timeout` is given up on: the caller gets OSError and moves on, but
    the thread cannot be killed, so that key stays busy (and is refused at once) until the
    read returns. Threads therefore never pile up: one per key at the very most. A daemon
    thread of its own rather than the loop's default executor, which a stuck read would
    otherwise take a worker from (aiohttp resolves host names there).
    """

    def __init__(self, timeout: float = READ_TIMEOUT_SECONDS):
        self.timeout = timeout
        self.busy: set[str] = set()

    async def run(self, key: str, work: Callable[[], T]) -> T:
        if key in self.busy:
            raise OSError(errno.EBUSY, "an earlier read has not returned (a hung file system?)")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            self.busy.discard(key)
            if not done.done():
                if error is None:
                    done.set_result(result)
                else:
                    done.set_exception(error)

        def thread() -> None:
            result: Any = None
            error: BaseException | None = None
            try:
                result = work()
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine
                error = exc
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                self.busy.discard(key)

        self.busy.add(key)
        threading.Thread(target=thread, name=f"file-read {key}", daemon=True).start()
        try:
            # On timeout `done` is cancelled, so a late result is dropped unseen by `settle`.
            return await asyncio.wait_for(done, self.timeout)
        except TimeoutError:
            raise OSError(
                errno.ETIMEDOUT, f"no answer from the file system within {self.timeout:g} s"
            ) from None
