"""Response cache for allow-listed GET routes, with aiohttp-client-cache as the storage engine.

Keys are ours, not the library's: method, raw path and query, the `Accept` and
`Accept-Language` headers, whether the caller takes gzip, and, unless the route is `shared`,
the caller's derived identifier; so one user's answer is never served to another. A shared
route forwards only the headers in the key and the proxy's own, so no caller shapes its entry.
Entries are signed (itsdangerous, keyed from the HMAC key) wherever they are serialized, so a
value planted in Redis or the SQLite file is rejected rather than unpickled. Every failure of
the cache degrades to a pass-through.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import aiohttp
import redis.exceptions
from aiohttp import web
from aiohttp_client_cache.backends.sqlite import SQLiteBackend
from aiohttp_client_cache.response import CachedResponse
from multidict import CIMultiDict
from yarl import URL

from proxy.config import ResponseCacheConfig
from proxy.forwarding.body import read_bounded
from proxy.forwarding.cache_backends import CALL_TIMEOUT, MemoryCache, make_backend
from proxy.forwarding.relay import Hit, Miss
from proxy.forwarding.rewrite import CREDENTIAL_ANSWER_HEADERS
from proxy.metrics import Metrics
from proxy.web.routes import OTHER, RouteTable

log = logging.getLogger("proxy.response_cache")

OUTAGE_PAUSE = 5.0  # after a failure, skip the cache this long instead of waiting on it again
MAX_PENDING_WRITES = 100
HOUSEKEEPING_SECONDS = 30.0
_ENTRY_URL = URL("gini-auth-proxy:cached")  # entries are found by our keys, never by URL
T = TypeVar("T")
# Failures that mean "the cache is not there right now": pause it instead of waiting again.
_OUTAGES = (
    OSError,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    sqlite3.OperationalError,
    sqlite3.DatabaseError,
)
_CREDENTIALS_RAW = frozenset(name.encode("ascii") for name in CREDENTIAL_ANSWER_HEADERS)
# What a `shared` route forwards to Gini: one answer serves every caller, so no caller may add
# a header that shapes it (`X-Evil`, `If-None-Match`, `Range`...). The caller's `Accept` and
# `Accept-Language` (both in the key), and what `Forwarder.upstream_headers` sets itself.
SHARED_FORWARD = frozenset(
    {
        "accept",
        "accept-language",
        "accept-encoding",
        "authorization",
        "x-user-identifier",
        "x-jwt-authorization",
        "x-request-id",
    }
)


class Clock(Protocol):
    """The time the cache runs on: wall-clock UTC for an entry's `expires` (stored, so it must
    mean the same after a restart), monotonic for the memory backend's own expiry."""

    def utcnow(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """Real time, the default."""

    def utcnow(self) -> datetime:
        # The library compares naive UTC datetimes.
        return datetime.now(UTC).replace(tzinfo=None)

    def monotonic(self) -> float:
        return time.monotonic()


class ResponseCache:
    """The proxy's view of the cache: which routes, which keys, and failure handling."""

    def __init__(
        self,
        config: ResponseCacheConfig,
        hmac_key: bytes,
        metrics: Metrics,
        clock: Clock | None = None,
    ):
        self.config = config
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.metrics = metrics
        self._entries_gauge = metrics.response_cache_entries()
        self.table = RouteTable([route.template for route in config.routes])
        self.shared = {route.template: route.shared for route in config.routes}
        # A key of its own: signing entries must not reuse the identifier key directly.
        self.secret = hmac.new(hmac_key, b"gini-auth-proxy response cache", hashlib.sha256).digest()
        # Read through `self.clock` on each call, so a clock set after construction (tests
        # reach the cache only once Services built it) also moves the memory backend.
        self.backend = make_backend(config, self.secret, self._monotonic)
        self._paused_until = 0.0
        self._last_entry_warning = -OUTAGE_PAUSE
        self._counters: dict[tuple[str, str], Callable[[], None]] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._housekeeping: asyncio.Future[None] | None = None
        self.entries: int | None = None  # last count, where the backend can tell

    def _monotonic(self) -> float:
        return self.clock.monotonic()

    @property
    def max_entry_bytes(self) -> int:
        """The largest answer stored (read whole by `store`)."""
        return self.config.max_entry_bytes

    def route(self, method: str, path: str) -> str | None:
        """The allow-listed template this request falls under, or None."""
        if method not in ("GET", "HEAD"):
            return None
        template = self.table.match(path)
        return None if template == OTHER else template

    def key(self, template: str, raw_path: str, identifier: str, headers: CIMultiDict[str]) -> str:
        """The entry key, from Gini's request `headers`; per user unless the route is shared."""
        user = "" if self.shared[template] else identifier
        gzip = "identity" if headers.get("Accept-Encoding") == "identity" else "gzip"
        # Every value: a second `Accept` line is forwarded too, so it must be in the key.
        accept = ",".join(headers.getall("Accept", ()))
        language = ",".join(headers.getall("Accept-Language", ()))
        parts = (raw_path, user, accept, gzip, language)
        return hmac.new(self.secret, "\x00".join(parts).encode(), hashlib.sha256).hexdigest()

    def forwarded(self, miss: Miss | None, headers: CIMultiDict[str]) -> CIMultiDict[str]:
        """Gini's request headers for `miss`: on a shared route only `SHARED_FORWARD`."""
        if miss is None or not self.shared[miss.template]:
            return headers
        return CIMultiDict((n, v) for n, v in headers.items() if n.lower() in SHARED_FORWARD)

    def storable(self, template: str, status: int, headers: Mapping[str, str]) -> bool:
        """Only complete 200 answers that Gini does not mark as per-user or uncacheable."""
        if status != 200 or "Set-Cookie" in headers or headers.get("Vary", "").strip() == "*":
            return False
        directives = {
            d.strip().split("=")[0].lower() for d in headers.get("Cache-Control", "").split(",")
        }
        if "no-store" in directives:
            return False
        return not (self.shared[template] and "private" in directives)

    def count(self, template: str, result: str) -> None:
        """Count one lookup result (label children bound once, not per lookup)."""
        inc = self._counters.get((template, result))
        if inc is None:
            inc = self._counters[(template, result)] = self.metrics.response_cache.labels(
                template, result
            ).inc
        inc()

    async def lookup(
        self, request: web.Request, identifier: str, upstream_headers: CIMultiDict[str]
    ) -> Hit | Miss | None:
        """What the cache holds for this request; None when its route is not cached."""
        template = self.route(request.method, request.path)
        if template is None:
            return None
        if request.body_exists:
            self.count(template, "bypass")
            return None
        key = self.key(template, request.raw_path, identifier, upstream_headers)
        entry = await self.get(template, key)
        if entry is None:
            self.count(template, "miss")
            return Miss(template, key)
        self.count(template, "hit")
        return Hit(entry)

    async def store(self, miss: Miss, answer: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        """Read a storable answer whole and store it in the background.

        Returns the body read and whether it is all of it (and stored); an answer that cannot
        be stored comes back with what was read of it so far (maybe nothing).
        """
        limit = self.config.max_entry_bytes
        length = answer.content_length
        if not self.storable(miss.template, answer.status, answer.headers):
            return b"", False
        if length is not None and length > limit:
            return b"", False
        body, complete = await read_bounded(answer.content, limit)
        if complete:
            raw = _without_credentials(answer.raw_headers)
            entry = self.entry(answer.status, answer.reason or "", raw, body)
            self.put(miss.template, miss.key, entry)
        return body, complete

    async def get(self, template: str, key: str) -> CachedResponse | None:
        """A fresh cached answer, or None on a miss or any cache failure.

        Reads the storage directly: the library's `get_response` formats debug messages on
        every call and looks up redirect aliases this cache never writes.
        """
        responses = self.backend.responses
        if isinstance(responses, MemoryCache):
            found = responses.peek(key)  # in-process: nothing that can hang or fail
        else:
            found = await self._guarded(template, lambda: responses.read(key))
        if (
            isinstance(found, CachedResponse)
            and found.expires is not None
            and found.expires > self.clock.utcnow()
        ):
            return found
        return None

    def put(self, template: str, key: str, response: CachedResponse) -> None:
        """Store in the background: the caller already has its answer."""
        if len(self._pending) >= MAX_PENDING_WRITES:
            return  # the cache is slower than the traffic: skip rather than queue without bound
        task = asyncio.ensure_future(
            self._guarded(template, lambda: self.backend.responses.write(key, response))
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait until every background write started so far has finished."""
        while self._pending:
            await asyncio.wait(set(self._pending))

    def entry(self, status: int, reason: str, raw_headers: Any, body: bytes) -> CachedResponse:
        """A storable entry expiring after the configured TTL."""
        return CachedResponse(
            method="GET",
            reason=reason,
            status=status,
            url=_ENTRY_URL,
            version="1.1",
            body=body,
            raw_headers=tuple(raw_headers),
            expires=self.clock.utcnow() + timedelta(seconds=self.config.ttl_seconds),
        )

    async def _guarded(
        self,
        template: str | None,
        call: Callable[[], Awaitable[T]],
        timeout: float = CALL_TIMEOUT,
    ) -> T | None:
        now = time.monotonic()
        if now < self._paused_until:
            if template is not None:
                self.count(template, "error")
            return None
        try:
            return await asyncio.wait_for(call(), timeout)
        except Exception as exc:  # noqa: BLE001 - any cache failure must degrade, never surface
            if template is not None:
                self.count(template, "error")
            extra = {"error": type(exc).__name__, "backend": self._kind()}
            if self._kind().startswith("redis"):  # the address, never the URL's password
                redis_url = URL(self.config.backend)
                extra["address"] = f"{redis_url.host}:{redis_url.explicit_port or 6379}"
            if not isinstance(exc, _OUTAGES):
                # One bad entry (corrupt, tampered, unreadable): skip it, keep using the cache.
                if now - self._last_entry_warning > OUTAGE_PAUSE:
                    self._last_entry_warning = now
                    log.warning("response cache entry unusable; passing through", extra=extra)
                return None
            if self._paused_until == 0.0 or now - self._paused_until > OUTAGE_PAUSE:
                log.warning("response cache failed; passing requests through", extra=extra)
            self._paused_until = now + OUTAGE_PAUSE
            return None

    def _kind(self) -> str:
        return self.config.backend.split(":", 1)[0]

    async def size(self) -> int | None:
        """Entries stored, where the backend can tell cheaply."""
        size = await self._guarded(None, self.backend.responses.size)
        return size if size is not None and size >= 0 else None

    async def start(self) -> None:
        """Begin housekeeping: the entries gauge, and purging expired SQLite entries (memory
        and Redis entries expire by themselves)."""
        self._housekeeping = asyncio.ensure_future(self._housekeep())

    async def _housekeep(self) -> None:
        sqlite = isinstance(self.backend, SQLiteBackend)
        while True:
            self.entries = await self.size()
            if self.entries is not None:
                self._entries_gauge.set(self.entries)
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            if sqlite:
                await self._guarded(
                    None, self.backend.delete_expired_responses, HOUSEKEEPING_SECONDS
                )

    async def close(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            await asyncio.gather(self._housekeeping, return_exceptions=True)
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        await self.backend.close()  # type: ignore[no-untyped-call]


def _without_credentials(
    raw: tuple[tuple[bytes, bytes], ...],
) -> tuple[tuple[bytes, bytes], ...]:
    """Raw headers minus the credential-shaped ones, so a shared cache never holds them (a
    hit is filtered again on the way out, like a fresh answer)."""
    return tuple(pair for pair in raw if pair[0].lower() not in _CREDENTIALS_RAW)
