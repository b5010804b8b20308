"""Backing off when Gini pushes back (`upstream.protection`), one `Guard` per upstream.

A guard holds four things: a pause from Gini's `Retry-After`, a bound on calls in flight with a
short first-come-first-served queue, a breaker, and a retry budget. `proxy.upstream` asks it
before every call (`try_enter`, else `enter`) and tells it how the call went (`answered` or
`failed`, then `leave`). The clock is injected, and nothing here does I/O, so every rule is
tested without a server.

The hot path, with nothing paused or open and a slot free, is `try_enter` (two attribute
checks and a counter) and, after the call, one clock read and two bucket counts.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Protocol

from proxy.config.protection import ProtectionConfig
from proxy.errors import (
    ProxyError,
    UpstreamBusy,
    UpstreamThrottled,
    UpstreamThrottledUnavailable,
    UpstreamUnavailable,
)
from proxy.transport.retry_after import retry_after_seconds

BUDGET_SECONDS = 10.0  # the retry budget's window
BUDGET_FLOOR = 3  # retries allowed per window however few calls there were
# Failures for the breaker: Gini (or the way to it) is failing, not the caller or our setup.
BREAKER_REASONS = frozenset({"connect", "dns", "timeout", "disconnect", "proxy_connect"})
CLOSED, OPEN, PROBING = "closed", "open", "probing"
_BUCKETS = 10


class Events(Protocol):
    """Where shed calls and retries are counted (`proxy.metrics.Metrics`)."""

    def upstream_shed(self, upstream: str, reason: str) -> None: ...

    def upstream_retry(self, upstream: str, result: str) -> None: ...


class PauseBoard(Protocol):
    """Where a pause is shared beyond this replica. A board is told each pause this replica
    hears (`heard`, with Unix time); one that learns of a pause heard elsewhere calls
    `Guard.pause_heard_elsewhere`. Without a board each replica protects itself alone."""

    def heard(self, upstream: str, until: float, status: int) -> None: ...


class Window:
    """Two counts over the last `seconds`, in ten buckets. The current bucket is two plain
    attributes (`a`, `b`) that a caller may add to directly while `now < edge`; past buckets
    are summed on demand."""

    __slots__ = ("_past_a", "_past_b", "_stamps", "_tick", "_width", "a", "b", "edge")

    def __init__(self, seconds: float):
        self._width = seconds / _BUCKETS
        self.clear()

    def add(self, now: float, a: int, b: int) -> None:
        if now >= self.edge:
            self._roll(now)
        self.a += a
        self.b += b

    def totals(self, now: float) -> tuple[int, int]:
        if now >= self.edge:
            self._roll(now)
        a, b, tick = self.a, self.b, self._tick
        for i in range(_BUCKETS):
            if 0 < tick - self._stamps[i] < _BUCKETS:
                a += self._past_a[i]
                b += self._past_b[i]
        return a, b

    def clear(self) -> None:
        self._stamps = [-(2 * _BUCKETS)] * _BUCKETS
        self._past_a = [0] * _BUCKETS
        self._past_b = [0] * _BUCKETS
        self._tick, self.edge, self.a, self.b = -(2 * _BUCKETS), float("-inf"), 0, 0

    def _roll(self, now: float) -> None:
        """Keep the current bucket among the past ones and start the one `now` falls in."""
        i = self._tick % _BUCKETS
        self._stamps[i], self._past_a[i], self._past_b[i] = self._tick, self.a, self.b
        self._tick = int(now / self._width)
        self.edge = (self._tick + 1) * self._width
        self.a = self.b = 0


class Guard:
    """The protection of one upstream (`pay_api` or `user_center`) in this replica."""

    def __init__(
        self,
        name: str,
        config: ProtectionConfig,
        events: Events,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        board: PauseBoard | None = None,
    ):
        self.name, self.events, self.clock, self.wall, self.board = name, events, clock, wall, board
        self.limit = self.free = config.max_in_flight
        self.queue_seconds = config.queue_seconds
        self.honor_retry_after = config.honor_retry_after
        self.max_pause = config.max_pause_seconds
        self.budget_ratio = config.retry_budget_ratio
        breaker = config.breaker
        self.failure_ratio, self.min_calls = breaker.failure_ratio, breaker.min_calls
        self.open_seconds = breaker.open_seconds
        self.calls = Window(breaker.window_seconds)  # calls, failures
        self.budget = Window(BUDGET_SECONDS)  # calls (retries included), retries
        self.blocked = False  # paused, or the breaker not closed: admission takes the slow path
        self.paused_until = 0.0  # on `clock`; 0: no pause
        self.pause_status = 429
        self.state = CLOSED
        self.open_until = 0.0
        self._queue: deque[asyncio.Future[None]] = deque()

    # -- admission -----------------------------------------------------------------------

    def try_enter(self) -> bool:
        """Take a slot when nothing is in the way; False sends the caller to `enter`."""
        if self.blocked or self.free <= 0:
            return False
        self.free -= 1
        return True

    async def enter(self) -> None:
        """Take a slot, waiting at most `queue_seconds` behind earlier callers; or raise the
        contract error the caller gets instead (the call is then counted as shed)."""
        self._admit(self.clock(), breaker=True)
        if self.free > 0 and not self._queue:
            self.free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(waiter)
        try:
            async with asyncio.timeout(self.queue_seconds):
                await waiter
        except BaseException as exc:
            handed = waiter.done() and not waiter.cancelled()
            if not handed:
                waiter.cancel()
                self._queue.remove(waiter)  # a caller that went away leaves at once
                if isinstance(exc, TimeoutError):
                    raise self._shed("busy", UpstreamBusy, 1) from None
                raise
            if not isinstance(exc, TimeoutError):
                self.leave()  # the slot came as the caller went away: pass it on
                raise
            # Timed out in the same turn the slot came: keep it.
        try:
            self._admit(self.clock(), breaker=False)  # a pause heard while it waited
        except ProxyError:
            self.leave()
            raise

    def leave(self) -> None:
        """Give the slot back: to the first waiter still waiting, else to the pool."""
        if self.state is PROBING:
            # Left without an outcome (its caller went away): the next caller probes instead.
            self.state, self.open_until = OPEN, 0.0
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1

    def check_pause(self) -> None:
        """Raise the pause's contract error while one is in force (a retry must not go into
        it, nor sleep through it while its caller waits)."""
        if self.paused_until:
            self._admit(self.clock(), breaker=False)

    def check_shed(self) -> None:
        """Raise now the error admission would raise for a pause in force or a breaker that
        refuses calls, so a caller is answered before any work is done for its call. It never
        takes the breaker's probe: a breaker open long enough lets this call on to `enter`."""
        self._admit(self.clock(), breaker=True, probe=False)

    def _admit(self, now: float, *, breaker: bool, probe: bool = True) -> None:
        """Raise the error of a pause in force, or (`breaker`) of a breaker that refuses calls;
        a breaker open long enough makes this call its probe unless `probe` is false."""
        if self.paused_until:
            left = self.paused_until - now
            if left > 0:
                error = (
                    UpstreamThrottled if self.pause_status == 429 else UpstreamThrottledUnavailable
                )
                raise self._shed("paused", error, left)
            self.paused_until = 0.0
        if breaker and self.state != CLOSED:
            if self.state == PROBING or now < self.open_until:
                raise self._shed("breaker", UpstreamUnavailable, self.open_until - now)
            if probe:
                self.state = PROBING  # open long enough: this call is the one probe
        self.blocked = self.paused_until > 0 or self.state != CLOSED

    def _shed(self, reason: str, error: type[ProxyError], seconds: float) -> ProxyError:
        self.events.upstream_shed(self.name, reason)
        return error(headers={"Retry-After": str(max(1, math.ceil(seconds)))})

    # -- outcomes ------------------------------------------------------------------------

    def answered(self, status: int, headers: Mapping[str, str]) -> None:
        """Gini answered with `status` (its headers are read only for a 429 or 5xx)."""
        now = self.clock()
        if status < 500 and status != 429:
            calls, budget = self.calls, self.budget
            if now < calls.edge and now < budget.edge and self.state is CLOSED:
                calls.a += 1  # the common case, inlined: one more call in both windows
                budget.a += 1
            else:
                self._record(now, failed=False)
            return
        value = headers.get("Retry-After")
        seconds = None if value is None else retry_after_seconds(value, self.wall())
        if seconds is not None and status in (429, 503) and self.honor_retry_after and seconds:
            self.pause(now + min(seconds, self.max_pause), status)
            if self.board is not None:
                self.board.heard(self.name, self.wall() + min(seconds, self.max_pause), status)
        # A 5xx that says when to come back is Gini managing its load, not failing.
        self._record(now, failed=status >= 500 and seconds is None)

    def failed(self, reason: str) -> None:
        """The call failed without an answer, for a `transport.failures` reason."""
        self._record(self.clock(), failed=reason in BREAKER_REASONS)

    def _record(self, now: float, *, failed: bool) -> None:
        self.calls.add(now, 1, failed)
        self.budget.add(now, 1, 0)
        if self.state == PROBING:
            if failed:
                self._open(now)
            else:
                self.state = CLOSED
                self.blocked = self.paused_until > 0
        elif failed and self.state == CLOSED:
            calls, failures = self.calls.totals(now)
            if calls >= self.min_calls and failures >= self.failure_ratio * calls:
                self._open(now)

    def _open(self, now: float) -> None:
        self.state, self.open_until, self.blocked = OPEN, now + self.open_seconds, True
        self.calls.clear()  # a closed breaker starts counting afresh

    def pause(self, until: float, status: int) -> None:
        """Pause calls until `until` (on `clock`); a later pause wins, a shorter one is kept."""
        if until > self.paused_until:
            self.paused_until, self.pause_status, self.blocked = until, status, True

    def pause_heard_elsewhere(self, until: float, status: int) -> None:
        """A pause another replica heard (`until` in Unix time), as a `PauseBoard` reports it."""
        left = min(until - self.wall(), self.max_pause)
        if left > 0:
            self.pause(self.clock() + left, status)

    # -- retries -------------------------------------------------------------------------

    def spend_retry(self) -> bool:
        """Take one automatic retry from the budget; False (counted) when it is spent."""
        now = self.clock()
        calls, retries = self.budget.totals(now)
        if retries >= max(BUDGET_FLOOR, self.budget_ratio * (calls - retries)):
            self.events.upstream_retry(self.name, "over_budget")
            return False
        self.budget.add(now, 0, 1)
        self.events.upstream_retry(self.name, "sent")
        return True

    # -- for /status and the gauges --------------------------------------------------------

    def pause_left(self) -> float:
        return max(0.0, self.paused_until - self.clock()) if self.paused_until else 0.0

    def breaker_open(self) -> int:
        return 0 if self.state == CLOSED else 1

    def status(self) -> dict[str, object]:
        return {
            "paused_seconds": math.ceil(self.pause_left()),
            "breaker": self.state,
            "in_flight": self.limit - self.free,
            "queued": sum(not waiter.done() for waiter in self._queue),
        }
