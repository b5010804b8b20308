"""The fleet's Redis: every call bounded, an outage noticed once, and a background probe.

Every call runs under `call_timeout_seconds`. The first timeout or error marks the fleet down:
from then on calls fail at once (`FleetDown`) without touching the network, so callers never
pay the timeout per request while Redis is away, and a probe pings Redis in the background
until it answers; then the replica rejoins, with no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio
from prometheus_client import Counter, Gauge
from redis.credentials import CredentialProvider
from redis.exceptions import RedisError

from proxy.config.fleet import FleetConfig

log = logging.getLogger("proxy.fleet")

T = TypeVar("T")
PROBE_SECONDS = 1.0
MAX_CONCURRENT_CALLS = 64
"""Redis calls one replica has in flight at once; more wait their turn (the wait is not part
of their call timeout). redis-py's pools hold 100 connections (per node, for a cluster) and
fail a call beyond that: a burst of 300 new users at one replica took the whole replica out
of the fleet for a second. 64 calls of about 0.2 ms each still serve 100,000 calls a second."""


class FleetDown(Exception):
    """Redis is unreachable, slow or failing: the replica acts alone."""


@dataclass(frozen=True, slots=True)
class FleetMetrics:
    up: Gauge
    errors: Counter
    lock_waits: Counter
    takeovers: Counter


class PasswordHolder(CredentialProvider):
    """The Redis password in force, read by every new connection (so a reload applies)."""

    def __init__(self, username: str | None, password: str):
        self.username = username
        self.password = password

    def use(self, password: str) -> None:
        self.password = password

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        if self.username:
            return self.username, self.password
        return (self.password,)


def make_client(config: FleetConfig, holder: PasswordHolder | None) -> Any:
    """A redis-py asyncio client (or cluster client) for the config; connects lazily."""
    options: dict[str, Any] = {
        "socket_connect_timeout": config.call_timeout_seconds,
        "socket_timeout": max(config.call_timeout_seconds, 1.0),
        "decode_responses": False,
    }
    if holder is not None:
        options["credential_provider"] = holder
    if config.cluster:
        return redis.asyncio.RedisCluster.from_url(config.redis_url.value, **options)
    return redis.asyncio.from_url(config.redis_url.value, **options)


def password_holder(config: FleetConfig) -> PasswordHolder | None:
    if config.password is None:
        return None
    from urllib.parse import urlsplit  # noqa: PLC0415 - only with a separate password

    return PasswordHolder(urlsplit(config.redis_url.value).username, config.password.value)


class Remote:
    """Bounded calls to the fleet's Redis and whether it is up."""

    def __init__(self, config: FleetConfig, metrics: FleetMetrics, client: Any = None):
        self.config = config
        self.metrics = metrics
        self.holder = password_holder(config)
        self.client = client if client is not None else make_client(config, self.holder)
        self.timeout = config.call_timeout_seconds
        self.up = True
        self.down_since: float | None = None
        self._probe: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_CALLS)
        metrics.up.set(1)

    async def call(self, op: str, awaitable: Awaitable[T]) -> T:
        """The result of one Redis call; FleetDown (at once while down) on timeout or error.
        A call first waits for one of the replica's slots: that wait is this replica's own
        load, so it is not held against Redis (each slot's holder is bounded by the call
        timeout, and once Redis is marked down the waiters leave at once)."""
        started = False
        try:
            if self.up:
                async with self._slots:
                    if self.up:
                        started = True
                        return await self._timed(op, awaitable)
            raise FleetDown
        finally:
            if not started and asyncio.iscoroutine(awaitable):
                awaitable.close()  # never awaited: no "coroutine was never awaited" warning

    async def _timed(self, op: str, awaitable: Awaitable[T]) -> T:
        try:
            # Not wait_for: on 3.11 it can swallow a cancellation that races the result.
            async with asyncio.timeout(self.timeout):
                return await awaitable
        except (TimeoutError, RedisError, OSError) as exc:
            self.metrics.errors.labels(op).inc()
            self._down(op, exc)
            raise FleetDown from None

    def _down(self, op: str, exc: BaseException) -> None:
        if not self.up:
            return
        self.up = False
        self.down_since = time.time()
        self.metrics.up.set(0)
        # The class name only: a redis-py message may quote the URL.
        log.warning(
            "fleet Redis failed (%s on %s); this replica acts alone until it answers again",
            type(exc).__name__,
            op,
        )
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._probe_until_up())

    async def _probe_until_up(self) -> None:
        while True:
            await asyncio.sleep(PROBE_SECONDS)
            try:
                async with asyncio.timeout(self.timeout):
                    await self.client.ping()
            except (TimeoutError, RedisError, OSError):
                continue
            self.up = True
            self.down_since = None
            self.metrics.up.set(1)
            log.info("fleet Redis answers again; this replica shares tokens again")
            return

    async def start(self) -> None:
        """One ping at startup: an unreachable Redis is logged and probed, never fatal."""
        with contextlib.suppress(FleetDown):
            await self.call("ping", self.client.ping())

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        await self.client.aclose()
