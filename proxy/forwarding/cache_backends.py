"""Where cached answers are kept: in the process (bounded, expiring), in Redis (one key per
entry with a Redis-side expiry) or in SQLite (the library's backend); chosen by
`response_cache.backend`. Values are signed wherever they are serialized."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterable, Callable
from typing import Any

import redis.asyncio
from aiohttp_client_cache.backends.base import BaseCache, CacheBackend
from aiohttp_client_cache.backends.sqlite import SQLiteBackend
from cachetools import TTLCache

from proxy.config import ResponseCacheConfig

CALL_TIMEOUT = 0.5  # a cache slower than this is worse than no cache
MEMORY_MAX_ENTRIES = 10_000


class MemoryCache(BaseCache):
    """Per-process storage: bounded, expiring, no serialization."""

    def __init__(
        self,
        ttl: float,
        max_entries: int = MEMORY_MAX_ENTRIES,
        timer: Callable[[], float] = time.monotonic,
    ):
        super().__init__()
        self._items: TTLCache[str, Any] = TTLCache(maxsize=max_entries, ttl=ttl, timer=timer)

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


def make_backend(
    config: ResponseCacheConfig,
    secret_key: bytes,
    timer: Callable[[], float] = time.monotonic,
) -> CacheBackend:
    """The storage chosen by `response_cache.backend`; `timer` is the memory backend's clock
    (Redis expires entries itself, SQLite by the `expires` each entry carries)."""
    backend = CacheBackend(expire_after=config.ttl_seconds)
    if config.backend == "memory":
        backend.responses = MemoryCache(config.ttl_seconds, timer=timer)
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
