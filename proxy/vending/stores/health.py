"""Store outage isolation: a background check of the credential store, and a deadline and a
fail-fast on every store call, so a dead or blackholed database costs flow 4 a quick 503
`store_unavailable` and costs flows 1-3 nothing.

The check writes (the store's `ping` updates a heartbeat row): a full disk or a read-only
database still answers reads. A call that fails with `StoreDown` (such as "disk full") marks the
store down at once, without waiting for the check.

asyncpg bounds each step on its own (connect, pool acquire, statement, the cancel request), but
the sum of those steps, and the cleanup of a call cut short, can take longer than any one of
them. So every store call runs in its own task and the caller stops waiting at the deadline.
The task is left to end by the driver's own timeouts (cancelling it mid-cleanup only leaves
asyncpg's shielded release behind, unobserved); it is tracked until it ends, and shutdown waits
for it (bounded) before cancelling what is left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import Gauge

from proxy.errors import StoreUnavailable
from proxy.telemetry.tracing import CURRENT, end_internal
from proxy.vending.stores.base import (
    CredentialStore,
    SealedRow,
    StoreDown,
    StoredUser,
    StoreOrigin,
)

if TYPE_CHECKING:  # `cryptography` loads with a store backend, not with this module
    from proxy.vending.stores.cipher import Cipher

log = logging.getLogger("proxy.store")

T = TypeVar("T")

CHECK_INTERVAL = 3.0
"""Seconds between two checks while the store answers: a dead store shows within 3 + 2 s."""
RECHECK_INTERVAL = 1.0
"""Seconds between two checks while it does not: recovery shows within about 1 + 2 s."""
CHECK_TIMEOUT = 2.0
"""A ping that has not answered after this long counts as a failure, whatever the driver does."""
CALL_TIMEOUT = 2.5
"""The longest a request waits for one store call (a new anonymous user's 503 stays under 3 s)."""
CLEANUP_TIMEOUT = 2.0
"""How long shutdown waits for abandoned calls to finish their own cleanup."""


class Deadlines:
    """Runs store calls with a deadline the caller never waits past."""

    def __init__(self) -> None:
        self._abandoned: set[asyncio.Task[Any]] = set()

    @property
    def abandoned(self) -> int:
        """Calls cut short whose cleanup is still running."""
        return len(self._abandoned)

    async def run(self, call: Awaitable[T], seconds: float) -> T:
        """The result of `call`, or TimeoutError after `seconds`; never waits longer."""
        task = asyncio.ensure_future(call)
        try:
            async with asyncio.timeout(seconds):
                # shield: at the deadline only this wait ends; the driver's own cleanup (e.g.
                # asyncpg waiting for a cancel request on a dead connection) goes on unwaited.
                return await asyncio.shield(task)
        except BaseException:  # the deadline, or the caller itself was cancelled
            if not task.done():
                self._abandoned.add(task)
                task.add_done_callback(self._finished)
            elif task.cancelled() and not _being_cancelled():
                # The driver cancelled its own call: a failure of the store, not a reason to
                # unwind the caller (the background check would otherwise stop).
                raise StoreUnavailable from None
            raise

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not report it as never retrieved

    async def drain(self) -> None:
        """Give abandoned calls a bounded chance to finish, then cancel the rest (shutdown)."""
        if not self._abandoned:
            return
        _, pending = await asyncio.wait(list(self._abandoned), timeout=CLEANUP_TIMEOUT)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=CLEANUP_TIMEOUT)


def _being_cancelled() -> bool:
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


def error_name(exc: BaseException) -> str:
    """The class of what went wrong: the driver's error a StoreUnavailable was raised from."""
    if isinstance(exc, StoreDown) and exc.detail:
        return exc.detail  # e.g. SQLITE_FULL or DiskFullError
    context = exc.__context__
    if isinstance(exc, StoreUnavailable) and context is not None:
        return type(context).__name__
    return type(exc).__name__


class StoreHealth:
    """Whether the store answers, kept current by a background task; feeds `gini_proxy_store_up`.

    It starts out up: the store was opened, or the process would have exited with code 3.
    """

    def __init__(
        self,
        store: CredentialStore,
        gauge: Gauge | None = None,
        *,
        interval: float = CHECK_INTERVAL,
        recheck_interval: float = RECHECK_INTERVAL,
        timeout: float = CHECK_TIMEOUT,
    ):
        self.store = store
        self.gauge = gauge
        self.interval = interval
        self.recheck_interval = recheck_interval
        self.timeout = timeout
        self.deadlines = Deadlines()  # shared with GuardedStore: one place to drain on shutdown
        self._pings = Deadlines()
        self.up = True
        self.since = time.time()  # when `up` last changed
        self.last_check_at: float | None = None
        self.last_error: str | None = None  # a class name only: driver messages can quote a DSN
        self.last_error_at: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        if gauge is not None:
            gauge.set(1)

    async def check(self) -> bool:
        """Ping the store once, within `timeout`, and record the outcome."""
        if self._pings.abandoned:
            # The last ping still hangs (a store that never answers, e.g. SQLite on a dead
            # network volume): stacking another one per tick would grow without bound.
            self._record(self.last_error or "TimeoutError")
            return self.up
        try:
            await self._pings.run(self.store.ping(), self.timeout)
        except (StoreUnavailable, TimeoutError) as exc:
            self._record(error_name(exc))
        except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the store is down
            log.warning("store check failed unexpectedly", extra={"error": type(exc).__name__})
            self._record(type(exc).__name__)
        else:
            self._record(None)
        return self.up

    def _record(self, error: str | None) -> None:
        now = time.time()
        self.last_check_at = now
        up = error is None
        if error is not None:
            self.last_error, self.last_error_at = error, now
        if up != self.up:
            self.since = now
            if up:
                log.info("the credential store answers again")
            else:
                log.warning("the credential store does not answer", extra={"error": error})
        self.up = up
        if self.gauge is not None:
            self.gauge.set(1 if up else 0)

    def wake(self) -> None:
        """A store call just failed: check now instead of at the next tick."""
        self._wake.set()

    def mark_down(self, error: str) -> None:
        """A call just proved the store cannot work (disk full): down now, then check again."""
        self._record(error)
        self.wake()

    async def _run(self) -> None:
        while True:
            pause = self.interval if self.up else self.recheck_interval
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)
            self._wake.clear()
            await self.check()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gini-proxy-store-check")

    async def stop(self) -> None:
        """Stop checking; safe to call twice and from a cancelled shutdown."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await self._pings.drain()
        await self.deadlines.drain()


class GuardedStore:
    """The store as requests see it: fails fast while the check knows the store is down, and
    turns a call that outlives CALL_TIMEOUT into StoreUnavailable (the one place that does)."""

    def __init__(self, store: CredentialStore, health: StoreHealth, timeout: float = CALL_TIMEOUT):
        self.inner = store
        self.cipher: Cipher = store.cipher  # the same keyring object the store seals with
        self.health = health
        self.timeout = timeout

    @property
    def origin(self) -> StoreOrigin | None:
        return self.inner.origin

    async def _call(self, call: Callable[[], Awaitable[T]], op: str = "store") -> T:
        trace = CURRENT.get()  # a sampled request's trace: the call is an INTERNAL span in it
        if trace is None:
            return await self._guarded(call)
        span = trace.internal(f"store.{op}")
        try:
            result = await self._guarded(call)
        except BaseException:
            end_internal(span, failed=True)
            raise
        end_internal(span, failed=False)
        return result

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        if not self.health.up:
            raise StoreUnavailable
        try:
            return await self.health.deadlines.run(call(), self.timeout)
        except TimeoutError:
            log.warning("store call timed out", extra={"seconds": self.timeout})
            self.health.wake()
            raise StoreUnavailable from None
        except StoreDown as exc:
            self.health.mark_down(error_name(exc))
            raise
        except StoreUnavailable:
            self.health.wake()
            raise

    async def open(self) -> None:
        await self.inner.open()  # startup: the store's own timeouts; failure exits with code 3

    async def close(self) -> None:
        await self.inner.close()

    async def ping(self) -> None:
        await self._call(self.inner.ping, "ping")

    def use_password(self, password: str) -> None:
        self.inner.use_password(password)

    async def get(self, key: str) -> StoredUser | None:
        return await self._call(lambda: self.inner.get(key), "get")

    async def claim(self, key: str, email: str, password: str) -> StoredUser:
        return await self._call(lambda: self.inner.claim(key, email, password), "claim")

    async def replace(self, key: str, old_email: str, email: str, password: str) -> StoredUser:
        return await self._call(
            lambda: self.inner.replace(key, old_email, email, password), "replace"
        )

    async def activate(self, key: str, email: str) -> None:
        await self._call(lambda: self.inner.activate(key, email), "activate")

    async def delete(self, key: str) -> bool:
        return await self._call(lambda: self.inner.delete(key), "delete")

    async def count(self) -> int:
        return await self._call(self.inner.count, "count")

    # Metadata and re-sealing (identity key guard, store key rotation) go through the same gate.

    async def get_meta(self, name: str) -> bytes | None:
        return await self._call(lambda: self.inner.get_meta(name), "get_meta")

    async def setdefault_meta(self, name: str, value: bytes) -> bytes:
        return await self._call(lambda: self.inner.setdefault_meta(name, value), "setdefault_meta")

    async def replace_meta(self, name: str, old: bytes, new: bytes) -> bool:
        return await self._call(lambda: self.inner.replace_meta(name, old, new))

    async def sealed_rows(self, after: str, limit: int) -> list[SealedRow]:
        return await self._call(lambda: self.inner.sealed_rows(after, limit))

    async def sealed_row(self, key: str) -> SealedRow | None:
        return await self._call(lambda: self.inner.sealed_row(key))

    async def reseal(self, key: str, email: str, old: bytes, new: bytes) -> bool:
        return await self._call(lambda: self.inner.reseal(key, email, old, new))

    async def reseal_many(self, swaps: Sequence[tuple[SealedRow, bytes]]) -> set[str]:
        return await self._call(lambda: self.inner.reseal_many(swaps))
