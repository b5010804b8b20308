"""Response cache for allow-listed GET routes, with aiohttp-client-cache as the storage engine.

Keys are ours, not the library's: method, raw path and query, the `Accept` header, whether
the caller takes gzip, and, unless the route is `shared`, the caller's derived identifier; so
one user's answer is never served to another. Entries are signed (itsdangerous, keyed from the
HMAC key) wherever they are serialized, so a value planted in Redis or the SQLite file is
rejected rather than unpickled. Every failure of the cache degrades to a pass-through.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import redis.asyncio
import redis.exceptions
from aiohttp_client_cache.backends.base import BaseCache, CacheBackend
from aiohttp_client_cache.backends.sqlite import SQLiteBackend
from aiohttp_client_cache.response import CachedResponse
from cachetools import TTLCache
from yarl import URL

from proxy.config import ResponseCacheConfig
from proxy.metrics import Metrics
from proxy.web.routes import OTHER, RouteTable

log = logging.getLogger("proxy.response_cache")

CALL_TIMEOUT = 0.5  # a cache slower than this is worse than no cache
OUTAGE_PAUSE = 5.0  # after a failure, skip the cache this long instead of waiting on it again
MEMORY_MAX_ENTRIES = 10_000
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


class MemoryCache(BaseCache):
    """Per-process storage: bounded, expiring, no serialization."""

    def __init__(self, ttl: float, max_entries: int = MEMORY_MAX_ENTRIES):
        super().__init__()
        self._items: TTLCache[str, Any] = TTLCache(maxsize=max_entries, ttl=ttl)

    async def contains(self, key: str) -> bool:
        return key in self._items

    async def clear(self) -> None:
        self._items.clear()

    async def delete(self, key: str) -> None:
        self._items.pop(key, None)

    async def bulk_delete(self, keys: set[str]) -> None:
        for key in keys:
            self._items.pop(key, None)

    async def keys(self) -> AsyncIterable[str]:
        for key in list(self._items):
            yield key

    async def read(self, key: str) -> Any:
        return self._items.get(key)

    def peek(self, key: str) -> Any:
        """`read` without the coroutine: the hot path of the memory backend."""
        return self._items.get(key)

    async def size(self) -> int:
        self._items.expire()
        return len(self._items)

    async def values(self) -> AsyncIterable[Any]:
        for value in list(self._items.values()):
            yield value

    async def write(self, key: str, item: Any) -> None:
        self._items[key] = item


class RedisCache(BaseCache):
    """Redis storage with one key per entry and a Redis-side expiry (`SET ... EX`), so expired
    entries cost nothing and several replicas share them. The library's own Redis backend keeps
    every entry in one hash that never expires."""

    def __init__(self, url: str, prefix: str, ttl: int, secret_key: bytes):
        super().__init__(secret_key=secret_key)
        self.prefix = prefix
        self.ttl = ttl
        self.client = redis.asyncio.from_url(
            url, socket_timeout=CALL_TIMEOUT, socket_connect_timeout=CALL_TIMEOUT
        )

    async def contains(self, key: str) -> bool:
        return bool(await self.client.exists(self.prefix + key))

    async def clear(self) -> None:
        async for key in self.client.scan_iter(match=self.prefix + "*"):
            await self.client.delete(key)

    async def delete(self, key: str) -> None:
        await self.client.delete(self.prefix + key)

    async def bulk_delete(self, keys: set[str]) -> None:
        if keys:
            await self.client.delete(*(self.prefix + key for key in keys))

    async def keys(self) -> AsyncIterable[str]:
        async for key in self.client.scan_iter(match=self.prefix + "*"):
            yield key.decode()[len(self.prefix) :]

    async def read(self, key: str) -> Any:
        return self.deserialize(await self.client.get(self.prefix + key))

    async def size(self) -> int:
        return -1  # counting would mean scanning a shared Redis: not reported

    async def values(self) -> AsyncIterable[Any]:
        async for key in self.keys():
            yield await self.read(key)

    async def write(self, key: str, item: Any) -> None:
        value = self.serialize(item)
        if value is not None:
            await self.client.set(self.prefix + key, value, ex=self.ttl)

    async def close(self) -> None:
        await self.client.aclose()


def make_backend(config: ResponseCacheConfig, secret_key: bytes) -> CacheBackend:
    """The storage chosen by `response_cache.backend`."""
    backend = CacheBackend(expire_after=config.ttl_seconds)
    if config.backend == "memory":
        backend.responses = MemoryCache(config.ttl_seconds)
    elif config.backend.startswith("sqlite:"):
        path = config.backend[len("sqlite:///") :]
        with contextlib.suppress(OSError):  # cached answers are user data: owner-only file
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        backend = SQLiteBackend(
            path, expire_after=config.ttl_seconds, secret_key=secret_key, autoclose=False
        )
    else:
        backend.responses = RedisCache(
            config.backend, "gini-auth-proxy:response:", config.ttl_seconds, secret_key
        )
    return backend


class ResponseCache:
    """The proxy's view of the cache: which routes, which keys, and failure handling."""

    def __init__(self, config: ResponseCacheConfig, hmac_key: bytes, metrics: Metrics):
        self.config = config
        self.metrics = metrics
        self._entries_gauge = metrics.response_cache_entries()
        self.table = RouteTable([route.template for route in config.routes])
        self.shared = {route.template: route.shared for route in config.routes}
        # A key of its own: signing entries must not reuse the identifier key directly.
        self.secret = hmac.new(hmac_key, b"gini-auth-proxy response cache", hashlib.sha256).digest()
        self.backend = make_backend(config, self.secret)
        self._paused_until = 0.0
        self._last_entry_warning = -OUTAGE_PAUSE
        self._counters: dict[tuple[str, str], Callable[[], None]] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._housekeeping: asyncio.Future[None] | None = None
        self.entries: int | None = None  # last count, where the backend can tell

    def route(self, method: str, path: str) -> str | None:
        """The allow-listed template this request falls under, or None."""
        if method not in ("GET", "HEAD"):
            return None
        template = self.table.match(path)
        return None if template == OTHER else template

    def key(self, template: str, raw_path: str, identifier: str, accept: str, gzip: bool) -> str:
        """The entry key; per user unless the route is shared."""
        user = "" if self.shared[template] else identifier
        parts = (raw_path, user, accept, "gzip" if gzip else "identity")
        return hmac.new(self.secret, "\x00".join(parts).encode(), hashlib.sha256).hexdigest()

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
            and found.expires > _utcnow()
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
            expires=_utcnow() + timedelta(seconds=self.config.ttl_seconds),
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


def _utcnow() -> datetime:
    # The library compares naive UTC datetimes.
    return datetime.now(UTC).replace(tzinfo=None)
