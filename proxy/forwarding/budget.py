"""The process-wide budget for bodies held in memory (`max_buffered_bytes`).

A JSON body is read whole to have its URLs rewritten, so memory grows with the number of such
bodies in flight; without a bound, a few hundred concurrent 1 MB answers take a pod past its
limit. Every holder takes its bytes from one `BufferBudget` before it reads (or keeps) them and
gives them back once its answer is sent, whatever way that ends. A holder that finds no room
waits up to `WAIT_SECONDS` in line (first come, first served), then gets 503 `overloaded`: a
short wait absorbs a burst, and a refusal is better than relaying the body unrewritten or
running out of memory.
"""

from __future__ import annotations

import asyncio
from collections import deque

from proxy.errors import Overloaded

WAIT_SECONDS = 1.0
"""Longest wait for room before the caller gets 503 `overloaded`."""
UNCOUNTED = 128 * 1024
"""A body held with its rewritten copy in at most this many bytes is not counted: small answers
(most of them) stay off the budget's bookkeeping, and their memory is bounded per connection."""


def overloaded() -> Overloaded:
    return Overloaded(headers={"Retry-After": "1"})


class BufferBudget:
    """Bytes of bodies held in memory, process-wide, at most `limit` at once. A holder takes
    at most `limit` in all: a body larger than the whole budget is held alone."""

    __slots__ = ("_waiting", "limit", "used", "wait")

    def __init__(self, limit: int, wait: float = WAIT_SECONDS):
        self.limit = limit
        self.wait = wait
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        """Holders waiting in line for room."""
        return sum(1 for _, granted in self._waiting if not granted.done())

    def take_now(self, size: int) -> bool:
        """Take `size` bytes if they are free and nobody is waiting; never waits."""
        if self._waiting or self.used + size > self.limit:
            return False
        self.used += size
        return True

    async def take(self, size: int) -> None:
        """Take `size` bytes, waiting in line for at most `wait` seconds.

        Raises `Overloaded` when no room came in time. Cancelled while waiting, it holds
        nothing; bytes granted just as the wait ended are given back.
        """
        if self.take_now(size):
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((size, granted))
        try:
            async with asyncio.timeout(self.wait):
                await granted
        except BaseException as exc:
            if granted.done() and not granted.cancelled():
                self.give(size)  # room came as the wait ended: not used, so back it goes
            else:
                granted.cancel()
                self._wake()  # the line moved: whoever is next may fit now
            if isinstance(exc, TimeoutError):
                raise overloaded() from None
            raise

    def give(self, size: int) -> None:
        """Give back `size` bytes taken before."""
        self.used -= size
        self._wake()

    def _wake(self) -> None:
        """Grant waiting holders, in order, while the first in line fits."""
        waiting = self._waiting
        while waiting:
            size, granted = waiting[0]
            if granted.done():  # cancelled or timed out: out of line
                waiting.popleft()
                continue
            if self.used + size > self.limit:
                return
            waiting.popleft()
            self.used += size
            granted.set_result(None)
