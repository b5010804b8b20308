"""Every call to Gini: one shared ClientSession, and `Upstream.call`, the one context manager
that runs a call under its deadline, times it, counts it and turns every aiohttp or asyncio
failure into the contract's `ProxyError` (as httpx's `map_httpcore_exceptions` does for
httpcore). Nothing above this module sees an aiohttp exception.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from proxy import __version__
from proxy.config import UpstreamConfig
from proxy.credentials import Credentials
from proxy.errors import ProxyError
from proxy.metrics import Metrics
from proxy.telemetry.tracing import CURRENT, Tracing, end_span
from proxy.transport.deadlines import Deadline, Deadlines
from proxy.transport.failures import PERMANENT_REASONS, classify
from proxy.transport.interim import GuardedConnector
from proxy.transport.tls import TlsContext

log = logging.getLogger("proxy.upstream")

PAY_API = "pay_api"
USER_CENTER = "user_center"
USER_AGENT = f"gini-auth-proxy/{__version__}"
"""Sent to Gini when the caller sent no User-Agent of its own (never aiohttp's default)."""


class Retry(Exception):
    """An attempt made with `retry=True` failed in a way another attempt may fix (already
    counted, not logged)."""


class AnswerBroken(Exception):
    """Gini's answer failed after the caller's response had started (`Call.relaying`): all that
    is left is to cut the caller's connection. Counted as `disconnect` unless `client_gone`."""

    def __init__(self, client_gone: bool, error: str):
        super().__init__(error)
        self.client_gone = client_gone
        self.error = error  # the exception class, for the log line


class Call:
    """One call in progress, as `Upstream.call` yields it."""

    __slots__ = ("deadline", "refusal", "relaying", "response", "seconds")

    def __init__(self) -> None:
        self.response: aiohttp.ClientResponse  # Gini's answer, once its head arrived
        self.deadline: Deadline  # covers the answer's head, and its body unless moved
        self.seconds = 0.0  # until the answer's head
        self.refusal: ProxyError | None = None
        """Set by whoever feeds a streamed request body: the caller's own fault (too large, too
        slow) is what a failure of this call is then answered with."""
        self.relaying = False
        """Set once the caller's response has started: a failure can then only cut it."""


class Upstream:
    """Owns the shared ClientSession (created inside the running loop by `start`)."""

    def __init__(self, config: UpstreamConfig, metrics: Metrics, credentials: Credentials):
        self.config = config
        self.credentials = credentials
        self.metrics = metrics
        self.plain_timeout = aiohttp.ClientTimeout(
            total=None, connect=config.connect_timeout_seconds
        )
        self._session: aiohttp.ClientSession | None = None
        self.tracing: Tracing | None = None  # set by the composition root with `tracing`
        self.deadlines = Deadlines()
        self.tls = TlsContext(config.tls)
        egress = config.egress_proxy
        self.proxy = egress.url if egress is not None else None
        # Plain-HTTP upstreams behind the egress proxy: no CONNECT carries the proxy's
        # credentials, so each request does (aiohttp sends `proxy_headers` on a CONNECT only).
        self._plain_proxied = frozenset(
            name
            for name, base in ((PAY_API, config.pay_api), (USER_CENTER, config.user_center))
            if egress is not None and base.startswith("http://")
        )

    async def start(self) -> None:
        connector = GuardedConnector(
            limit=0,  # concurrency is bounded by callers, not by a hidden queue in the pool
            ttl_dns_cache=60,
            keepalive_timeout=30,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Connect only: each call runs under one deadline of its own (see `call`), because
            # aiohttp's per-read timer costs more than one deadline per request on the hot path.
            timeout=self.plain_timeout,
            auto_decompress=False,  # bodies are relayed as Gini encoded them
            cookie_jar=aiohttp.DummyCookieJar(),  # one session serves every user: keep no cookies
            headers={"User-Agent": USER_AGENT},  # a caller's own User-Agent replaces it
            raise_for_status=False,
            # Every Gini call goes through the egress proxy when one is configured (CONNECT
            # for https); the environment's *_PROXY variables are not read implicitly.
            proxy=self.proxy,
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

    def call(
        self,
        name: str,
        method: str,
        url: str | URL,
        *,
        headers: Mapping[str, str],
        data: Any = None,
        deadline: float | None,
        read_timeout: aiohttp.ClientTimeout | None = None,
        skip_auto_headers: Iterable[str] | None = None,
        call: Call | None = None,
        retry: bool = False,
        quiet: bool = False,
    ) -> Exchange:
        """`async with upstream.call(...) as call`: send one request to the upstream `name`
        (PAY_API or USER_CENTER); the block runs once the answer's head is in and reads the
        body from `call.response`.

        `deadline` bounds the whole block, in seconds (None: no overall bound, e.g. a streamed
        upload, which uses `read_timeout` per read instead). A failure, in the request or while
        the block reads the answer, is counted under its reason and raised as the contract's
        ProxyError, logged once with its cause unless `quiet`; with `retry`, a failure that is
        not permanent raises Retry instead, unlogged. See `Call` for what the caller's side
        can note on `call` to change that answer.
        """
        proxy_headers = self.credentials.proxy_headers
        if proxy_headers is not None:
            proxy_headers = dict(proxy_headers)  # aiohttp adds Host to it: keep ours as it is
            if name in self._plain_proxied:
                headers = CIMultiDict(headers)
                headers.update(proxy_headers)
        span = None
        if self.tracing is not None and (trace := CURRENT.get()) is not None:  # sampled only
            span = trace.client(name, method, URL(url).host)
            if self.tracing.propagate:
                headers = CIMultiDict(headers)
                headers["traceparent"] = trace.traceparent(span)
        request = self.session.request(
            method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            timeout=read_timeout or self.plain_timeout,
            skip_auto_headers=skip_auto_headers,
            ssl=self.tls.get(),
            proxy_headers=proxy_headers,
        )
        return Exchange(self, name, request, deadline, call or Call(), retry, quiet, span)

    def _failed(
        self, name: str, call: Call, exc: BaseException, retry: bool, quiet: bool
    ) -> BaseException:
        """What to raise for a failed call: the contract error, Retry, AnswerBroken, or the
        caller's own refusal. Counts and logs as it decides."""
        if call.relaying:
            gone = isinstance(exc, ConnectionResetError)
            if not gone:
                self.metrics.upstream_error(name, "disconnect")
            return AnswerBroken(gone, type(exc).__name__)
        if call.refusal is not None:
            return call.refusal
        error, reason, cause = classify(exc)
        self.metrics.upstream_error(name, reason)
        if retry and reason not in PERMANENT_REASONS:
            return Retry(reason)
        if not quiet:
            log.warning(
                "upstream call failed: %s",
                cause,
                extra={"upstream": name, "reason": reason, "error": type(exc).__name__},
            )
        error.detail = cause
        return error


class Exchange:
    """The context manager `Upstream.call` returns. A class rather than a generator-based
    context manager: that one cost about 1.6 µs more per call (uvloop, this machine), almost
    1 % of a flow-1 request."""

    __slots__ = (
        "_call",
        "_deadline",
        "_name",
        "_quiet",
        "_request",
        "_retry",
        "_span",
        "_timer",
        "_up",
    )

    def __init__(
        self,
        upstream: Upstream,
        name: str,
        request: Any,  # aiohttp's request context manager, not yet entered
        deadline: float | None,
        call: Call,
        retry: bool,
        quiet: bool,
        span: Any = None,  # the CLIENT span of a sampled request's call
    ):
        self._up, self._name, self._request = upstream, name, request
        self._deadline, self._call, self._retry, self._quiet = deadline, call, retry, quiet
        self._timer: Deadline | None = None
        self._span = span

    async def __aenter__(self) -> Call:
        timer = self._timer = self._up.deadlines.start(self._deadline)
        started = time.perf_counter()
        try:
            response = await self._request.__aenter__()
        except BaseException as exc:
            self._raise_translated(exc)
            raise
        if response.status == 407 and self._name in self._up._plain_proxied:
            # Gini never asks for proxy credentials: the egress proxy refused them, which a
            # CONNECT reports as this error (a plain-HTTP request gets it as an answer).
            response.close()
            self._raise_translated(
                aiohttp.ClientHttpProxyError(response.request_info, (), status=407)
            )
        call = self._call
        call.seconds = time.perf_counter() - started
        self._up.metrics.observe_upstream(self._name, call.seconds)
        call.response, call.deadline = response, timer
        return call

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._span is not None:
            end_span(self._span, None if exc is not None else self._call.response.status)
            self._span = None
        try:
            await self._request.__aexit__(kind, exc, tb)  # releases or closes the connection
        except BaseException as late:
            self._raise_translated(late)
            raise
        if exc is not None:
            self._raise_translated(exc)
        assert self._timer is not None
        self._up.deadlines.stop(self._timer)

    def _raise_translated(self, exc: BaseException) -> None:
        """Stop the deadline; raise what `exc` means for the caller, or return to let it pass
        (an error of the block's own, or a cancellation that is not the deadline's)."""
        timer = self._timer
        assert timer is not None
        self._up.deadlines.stop(timer)
        if self._span is not None:
            end_span(self._span, None)
            self._span = None
        if isinstance(exc, asyncio.CancelledError):
            if not timer.ours():
                return  # the caller went away, or shutdown
            exc = TimeoutError()
        elif not isinstance(exc, aiohttp.ClientError | TimeoutError):
            return
        raise self._up._failed(self._name, self._call, exc, self._retry, self._quiet) from exc
