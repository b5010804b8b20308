"""Deadlines for the calls in flight, watched by one timer instead of one timer per call.

`asyncio.timeout()` arms and cancels a loop timer for every call: with uvloop that is about
4 µs of the ~200 µs a flow-1 request costs, the largest single thing the proxy added to a call
(py-spy, `scripts/bench --profile`). Here starting a deadline is a dict insert; one sweep,
armed only while deadlines are pending, runs every RESOLUTION seconds and cancels each task
whose deadline has passed, and `Upstream.call` turns that cancellation into TimeoutError the
way `asyncio.timeout` does. A deadline fires between 0 and RESOLUTION late, which is nothing
next to timeouts of seconds.
"""

from __future__ import annotations

import asyncio

RESOLUTION = 0.05


class Deadline:
    """One call's deadline: `when()` and `reschedule()` as on `asyncio.Timeout`."""

    __slots__ = ("at", "cancelling", "expired", "task")

    def __init__(self, task: asyncio.Task[object], at: float | None):
        self.task = task
        self.at = at
        self.cancelling = 0  # the task's cancel requests before this deadline's own
        self.expired = False

    def when(self) -> float | None:
        return self.at

    def reschedule(self, when: float | None) -> None:
        """Move the deadline to loop time `when` (None: no deadline for now)."""
        self.at = when

    def ours(self) -> bool:
        """After a CancelledError: was it this deadline's (then it is taken back)?"""
        return self.expired and self.task.uncancel() <= self.cancelling


class Deadlines:
    """The pending deadlines of one event loop."""

    def __init__(self) -> None:
        self._pending: set[Deadline] = set()
        self._sweep: asyncio.TimerHandle | None = None

    def start(self, seconds: float | None) -> Deadline:
        """A deadline `seconds` from now for the current task (None: none, until rescheduled)."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None  # only called from a request's task
        deadline = Deadline(task, None if seconds is None else loop.time() + seconds)
        self._pending.add(deadline)
        if self._sweep is None:
            self._sweep = loop.call_later(RESOLUTION, self._expire, loop)
        return deadline

    def stop(self, deadline: Deadline) -> None:
        self._pending.discard(deadline)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for deadline in [d for d in self._pending if d.at is not None and d.at <= now]:
            self._pending.discard(deadline)
            deadline.expired = True
            deadline.cancelling = deadline.task.cancelling()
            deadline.task.cancel()
        self._sweep = loop.call_later(RESOLUTION, self._expire, loop) if self._pending else None
