"""The one aiohttp ClientSession for all calls to Gini, and the one place its errors are translated.

Everything above this module sees `ProxyError`s, never aiohttp exceptions.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NoReturn

import aiohttp

from .config import UpstreamConfig
from .errors import BadGateway, ProxyError, UpstreamTimeout, UpstreamUnavailable
from .interim import GuardedConnector
from .metrics import Metrics

log = logging.getLogger("proxy.upstream")

PAY_API = "pay_api"
USER_CENTER = "user_center"


class Upstream:
    """Owns the shared ClientSession (created inside the running loop by `start`)."""

    def __init__(self, config: UpstreamConfig, metrics: Metrics):
        self.config = config
        self.metrics = metrics
        self.plain_timeout = aiohttp.ClientTimeout(
            total=None, connect=config.connect_timeout_seconds
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = GuardedConnector(
            limit=0,  # concurrency is bounded by callers, not by a hidden queue in the pool
            ttl_dns_cache=60,
            keepalive_timeout=30,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Connect only: read timeouts are per request (see forward.py), because aiohttp's
            # per-read timer costs more than one deadline per request on the hot path.
            timeout=self.plain_timeout,
            auto_decompress=False,  # bodies are relayed as Gini encoded them
            cookie_jar=aiohttp.DummyCookieJar(),  # one session serves every user: keep no cookies
            raise_for_status=False,
        )

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def fail(self, upstream: str, exc: BaseException) -> NoReturn:
        """Translate an aiohttp/asyncio failure into the contract error, count it, raise it."""
        error, reason = translate(exc)
        self.metrics.upstream_error(upstream, reason)
        log.warning(
            "upstream call failed",
            extra={"upstream": upstream, "reason": reason, "error": type(exc).__name__},
        )
        raise error from exc


def translate(exc: BaseException) -> tuple[ProxyError, str]:
    """The contract error for a client-side failure, with the metric reason."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
        return UpstreamUnavailable(), "connect"
    if isinstance(exc, asyncio.TimeoutError):  # includes aiohttp's socket read timeout
        return UpstreamTimeout(), "timeout"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return BadGateway("Gini closed the connection before answering."), "disconnect"
    return BadGateway(), "bad_response"
