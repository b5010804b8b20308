"""Every call to Gini: one shared ClientSession, and `Upstream.call`, the one context manager
that runs a call under its deadline, times it, counts it and turns every aiohttp or asyncio
failure into the contract's `ProxyError` (as httpx's `map_httpcore_exceptions` does for
httpcore). Nothing above this module sees an aiohttp exception.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
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
from proxy.reporting.episodes import Episodes
from proxy.telemetry.tracing import CURRENT, TracedCall, Tracing
from proxy.transport.aiohttp_client import no_silent_resend
from proxy.transport.deadlines import Deadline, Deadlines
from proxy.transport.failures import PERMANENT_REASONS, classify
from proxy.transport.interim import guarded_connector
from proxy.transport.protection import Guard
from proxy.transport.tls import TlsContext

log = logging.getLogger("proxy.upstream")

PAY_API = "pay_api"
USER_CENTER = "user_center"
USER_AGENT = f"gini-auth-proxy/{__version__}"
"""Sent to Gini when the caller sent no User-Agent of its own (never aiohttp's default)."""


class Retry(Exception):
    """An attempt made with `retry=True` failed in a way another attempt may fix (already
    counted, not logged). `error` is what the caller gets when no other attempt is made."""

    def __init__(self, reason: str, error: ProxyError, report: Callable[[], None]):
        super().__init__(reason)
        self.reason, self.error, self._report = reason, error, report

    def give_up(self) -> ProxyError:
        """No other attempt: log the failure as a call without `retry` would, and return the
        error its caller gets."""
        self._report()
        return self.error


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
        # `upstream.protection`: a pause, a bound on calls in flight and a breaker per upstream.
        self.guards = {n: Guard(n, config.protection, metrics) for n in (PAY_API, USER_CENTER)}
        self.tls = TlsContext(config.tls)
        self.episodes = Episodes(log)
        self.addresses = {
            PAY_API: _address(config.pay_api),
            USER_CENTER: _address(config.user_center),
        }
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
        connector = guarded_connector(
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
        no_silent_resend(self._session)  # no PUT sent twice; flow 1 resends GETs itself

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
    ) -> Exchange | TracedCall[Call]:
        """`async with upstream.call(...) as call`: send one request to the upstream `name`
        (PAY_API or USER_CENTER); the block runs once the answer's head is in and reads the
        body from `call.response`.

        `deadline` bounds the whole block, in seconds (None: no overall bound). For a streamed
        upload (`data` an async iterable) it starts when the upload ends: however long the
        caller takes to send it, Gini's answer head must arrive within `deadline` of its end (an
        answer that starts before then runs under `read_timeout` alone).

        A failure, in the request or while the block reads the answer, is counted under its
        reason and raised as the contract's ProxyError, logged once with its cause unless
        `quiet`; with `retry`, a failure that is not permanent raises Retry instead, unlogged.
        See `Call` for what the caller's side can note on `call` to change that answer.
        """
        proxy_headers = self.credentials.proxy_headers
        if proxy_headers is not None:
            proxy_headers = dict(proxy_headers)  # aiohttp adds Host to it: keep ours as it is
            if name in self._plain_proxied:
                headers = CIMultiDict(headers)
                headers.update(proxy_headers)
        traced = None  # a sampled request's call: a CLIENT span, and `traceparent` if propagated
        if self.tracing is not None and (trace := CURRENT.get()) is not None:
            traced, headers = trace.client_call(name, method, url, headers)
        streamed = (
            data is not None
            and deadline is not None
            and not isinstance(data, bytes)  # the common case, before the ABC check
            and isinstance(data, AsyncIterable)
        )
        exchange = Exchange(
            self, name, None if streamed else deadline, call or Call(), retry, quiet
        )
        if streamed:
            assert deadline is not None
            data = exchange.timed_upload(data, deadline)
        exchange._request = self.session.request(
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
        return exchange if traced is None else traced.around(exchange)

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
        error, reason, cause = classify(exc, self.tls.get())
        self.metrics.upstream_error(name, reason)
        self.guards[name].failed(reason)
        error.detail = cause
        if retry and reason not in PERMANENT_REASONS:
            return Retry(reason, error, lambda: self._report(name, reason, cause, exc))
        if not quiet:
            self._report(name, reason, cause, exc)
        return error

    def _report(self, name: str, reason: str, cause: str, exc: BaseException) -> None:
        """Log a failed call; an outage logs its start, a line a minute, and its end."""
        fields = {"upstream": name, "reason": reason, "error": type(exc).__name__}
        fields["address"] = self.addresses[name]
        self.episodes.failed(name, reason, f"upstream call failed: {cause}", fields)


class Exchange:
    """The context manager `Upstream.call` returns. A class rather than a generator-based
    context manager: that one cost about 1.6 µs more per call (uvloop, this machine), almost
    1 % of a flow-1 request."""

    __slots__ = (
        "_answered", "_call", "_deadline", "_guard", "_name", "_quiet",
        "_request", "_retry", "_timer", "_up"
    )  # fmt: skip

    def __init__(
        self,
        upstream: Upstream,
        name: str,
        deadline: float | None,
        call: Call,
        retry: bool,
        quiet: bool,
    ):
        self._up, self._name = upstream, name
        self._request: Any = None  # aiohttp's request context manager, set by `Upstream.call`
        self._deadline, self._call, self._retry, self._quiet = deadline, call, retry, quiet
        self._timer: Deadline | None = None
        self._answered = False
        self._guard: Guard | None = None

    async def timed_upload(
        self, body: AsyncIterable[bytes], seconds: float
    ) -> AsyncIterator[bytes]:
        """`body` as aiohttp sends it; once it is all sent, the deadline of `seconds` starts
        (unless the answer's head came first). Runs in aiohttp's upload task: moving the
        deadline from there is fine, the sweep cancels the request's own task."""
        async for chunk in body:
            yield chunk
        if not self._answered and self._timer is not None:
            self._timer.reschedule(asyncio.get_running_loop().time() + seconds)

    async def __aenter__(self) -> Call:
        guard = self._guard = self._up.guards[self._name]
        if not guard.try_enter():  # paused, breaker open or every slot taken
            await self._queue(guard)
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
        self._answered = True
        guard.answered(response.status, response.headers)
        call = self._call
        self._up.episodes.succeeded(self._name)
        call.seconds = time.perf_counter() - started
        self._up.metrics.observe_upstream(self._name, call.seconds)
        call.response, call.deadline = response, timer
        return call

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._request.__aexit__(kind, exc, tb)  # releases or closes the connection
        except BaseException as late:
            self._raise_translated(late)
            raise
        if exc is not None:
            self._raise_translated(exc)
        assert self._timer is not None
        self._up.deadlines.stop(self._timer)
        self._release()

    async def _queue(self, guard: Guard) -> None:
        try:
            await guard.enter()
        except BaseException:
            self._guard = None
            self._request.close()  # never sent: no "coroutine was never awaited"
            raise

    def _release(self) -> None:
        """Give the call's slot back, once."""
        guard = self._guard
        if guard is not None:
            self._guard = None
            guard.leave()

    def _raise_translated(self, exc: BaseException) -> None:
        """Stop the deadline; raise what `exc` means for the caller, or return to let it pass
        (an error of the block's own, or a cancellation that is not the deadline's)."""
        timer = self._timer
        assert timer is not None
        self._up.deadlines.stop(timer)
        self._release()
        if isinstance(exc, asyncio.CancelledError):
            if not timer.ours():
                return  # the caller went away, or shutdown
            exc = TimeoutError()
        elif not isinstance(exc, aiohttp.ClientError | TimeoutError):
            return
        raise self._up._failed(self._name, self._call, exc, self._retry, self._quiet) from exc


def _address(url: str) -> str:
    """host:port of an upstream base URL, as failure lines name it."""
    parts = URL(url)
    return f"{parts.host}:{parts.port}"
