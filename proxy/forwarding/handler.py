"""Flow 1: relay a caller's request to the Pay API with Gini credentials, and the answer back.

The path of a request: this handler checks the method, the caller (`identity.CallerIdentity`)
and the target, builds Gini's headers, asks the response cache if there is one, reads or streams
the body, then makes the call through `Upstream.call` and hands the answer to `relay.Relay`.

Everything that depends only on the config (header drop lists, rewriters, the upstream base,
timeouts) is computed once in `Forwarder.__init__`; Gini's credentials come from the authorizer
`proxy.credentials` chose for flow 1. Per request the work is header filtering, one memoised
HMAC and the relay itself.

Timeouts: `upstream.timeout_seconds` bounds the wait for response headers and for each body
chunk. A request whose body is in memory runs under one deadline (one timer) that covers the
headers and, for answers read whole, their body too; streamed answers move it on per chunk.
For a streamed upload that deadline starts once the body is sent, and aiohttp's per-read timeout
covers an answer that starts earlier. The benchmark showed aiohttp's per-read timer costing more
than the one deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.config import Config
from proxy.config.memo import Memo
from proxy.credentials import Authorizer
from proxy.errors import (
    BadRequest,
    MethodNotAllowed,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
)
from proxy.forwarding.body import SMALL_BODY, STREAM_CHUNK, read_bounded, read_paced
from proxy.forwarding.budget import UNCOUNTED, BufferBudget
from proxy.forwarding.relay import Miss, Relay
from proxy.forwarding.rewrite import NEVER_FORWARD, HeaderFilter, UrlRewriter, is_json_type
from proxy.forwarding.target import has_dot_segment
from proxy.identity import CallerIdentity
from proxy.upstream import PAY_API, AnswerBroken, Call, Retry, Upstream
from proxy.web.context import RequestContext

if TYPE_CHECKING:
    from proxy.forwarding.cache import ResponseCache

# TRACE would echo the injected credentials back to the caller; CONNECT would open a tunnel.
REFUSED_METHODS = frozenset({"TRACE", "TRACK", "CONNECT"})
# Sent again once, within the retry budget, when the connection failed before any answer byte
# (refused, reset, a stale keep-alive connection): nothing reached Gini's application, and these
# carry no body. Every other method is sent once, since Gini's uploads are not known to be
# idempotent.
RESENDABLE = frozenset({"GET", "HEAD", "OPTIONS"})
RESEND_REASONS = frozenset({"connect", "disconnect"})
DOT_SEGMENT_MESSAGE = "The request path has a `.` or `..` segment; it is never forwarded."


class Forwarder:
    """The flow-1 handler: one instance per app, called for every Pay API request."""

    def __init__(
        self,
        config: Config,
        upstream: Upstream,
        caller: CallerIdentity,
        cache: ResponseCache | None = None,
        *,
        authorizer: Authorizer,
    ):
        self.upstream = upstream
        self._guard = upstream.guards[PAY_API]  # upstream.protection of the Pay API
        self.caller = caller
        self.cache = cache
        self.base = config.upstream.pay_api
        base = URL(self.base)
        self._origin = (base.scheme, base.raw_host, base.port)
        self._urls: Memo[str, URL] = Memo("upstream_urls")  # validated, of recent targets
        self.authorizer = authorizer  # Basic + X-User-Identifier, or a per-user JWT
        # The caller's trace context stops here: Gini gets ours, and only with
        # `tracing.propagate_to_gini` (added per call by `Upstream.call`).
        drop = set(NEVER_FORWARD) | {caller.header.lower(), "accept-encoding"}
        drop |= {"traceparent", "tracestate"}
        if config.inbound_auth is not None:
            drop.add(config.inbound_auth.header.lower())
        self.drop = HeaderFilter(frozenset(drop))
        self.to_upstream = UrlRewriter(config.public_url, self.base)
        self.max_body = config.max_body_bytes
        self.max_rewrite = config.max_rewrite_bytes
        self.timeout = config.upstream.timeout_seconds
        self.body_pause = config.client_timeouts.body_seconds
        self._upload_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=config.upstream.connect_timeout_seconds,
            sock_read=config.upstream.timeout_seconds,
        )
        # One per process (one Forwarder per app): request and answer bodies share it.
        self.budget = BufferBudget(config.max_buffered_bytes)
        self.relay = Relay(
            UrlRewriter(self.base, config.public_url),
            config.max_rewrite_bytes,
            cache,
            self.timeout,
            self.budget,
        )

    def upstream_url(self, raw_target: str) -> URL:
        """The Pay API URL for a request target; anything but an origin-form path is refused.

        The target is appended to the base as text, never resolved against it, so `//host`,
        `@host`, `%2F` or `..` can only ever name a path on the configured upstream.
        """
        url = self._urls.entries.get(raw_target)
        if url is not None:
            return url
        if not raw_target.startswith("/"):
            raise BadRequest  # absolute-form (`http://evil/`) or asterisk-form (`*`)
        if has_dot_segment(raw_target):
            raise BadRequest(DOT_SEGMENT_MESSAGE)
        url = URL(self.base + raw_target, encoded=True)
        if (url.scheme, url.raw_host, url.port) != self._origin:  # belt and braces
            raise BadRequest
        # Remembered because parsing it is 1.2 % of a request (callgrind), and callers repeat
        # targets (listings, a document polled until it is processed).
        return self._urls.remember(raw_target, url)

    def upstream_headers(
        self, request: web.Request, ctx: RequestContext, identifier: str
    ) -> CIMultiDict[str]:
        headers = self.drop(request.headers)
        # Only encodings this proxy can undo for URL rewriting are offered to Gini, and the
        # choice is always explicit so the client library adds no default of its own.
        accept = request.headers.get("Accept-Encoding", "").lower()
        gzip = "gzip" in accept or "deflate" in accept
        headers["Accept-Encoding"] = "gzip, deflate" if gzip else "identity"
        self.authorizer.sign(headers, identifier)
        headers["X-Request-Id"] = ctx.request_id
        return headers

    async def handle(self, request: web.Request) -> web.StreamResponse:  # noqa: PLR0912 - in order
        """The flow-1 handler."""
        ctx = RequestContext.of(request)
        if request.method in REFUSED_METHODS:
            raise MethodNotAllowed("This method is never forwarded to Gini.")
        identifier = self.caller.identifier(request.headers)
        if self._guard.blocked and self.cache is None:
            # A pause Gini asked for, or an open breaker, is answered before any work (with a
            # response cache, a stored answer may still be served: `Upstream.call` sheds the
            # rest).
            self._guard.check_shed()
        url = self.upstream_url(request.raw_path)
        headers = self.upstream_headers(request, ctx, identifier)
        miss: Miss | None = None
        if self.cache is not None:
            found = await self.cache.lookup(request, identifier, headers)
            if found is not None and not isinstance(found, Miss):
                return await self.relay.cached(request, ctx, found)
            miss = found
            headers = self.cache.forwarded(miss, headers)
        call = Call()
        data = None
        held = 0  # bytes of the buffer budget the request body holds, given back at the end
        if request.body_exists or request.content_length:  # GETs skip a coroutine
            try:
                data, held = await self._request_body(request, headers, call)
            except TimeoutError:
                raise self._body_timeout() from None
        streamed = data is not None and not isinstance(data, bytes)
        typed = data is None or "Content-Type" in headers
        resend = data is None and request.method in RESENDABLE
        try:
            while True:
                try:
                    async with self.upstream.call(
                        PAY_API,
                        request.method,
                        url,
                        headers=headers,
                        data=data,
                        deadline=self.timeout,  # for a streamed upload, from its end on
                        read_timeout=self._upload_timeout if streamed else None,
                        skip_auto_headers=None if typed else _NO_CONTENT_TYPE,
                        call=call,
                        retry=resend,
                    ):
                        resend = False  # an answer has begun: never sent again from here
                        ctx.upstream_seconds = call.seconds
                        status = call.response.status
                        ctx.gini_request_id = call.response.headers.get("X-Request-Id")
                        if status >= 500:
                            self.upstream.metrics.upstream_error(PAY_API, "status_5xx")
                        elif status == 401:  # Gini refused our credentials: a rotation may be due
                            self.authorizer.refused(identifier, headers)
                        return await self.relay.answer(request, ctx, call, miss)
                except Retry as failed:
                    if not (resend and self._may_resend(failed)):
                        raise failed.give_up() from None
                    resend = False
        except AnswerBroken as broken:
            return self.relay.abort(request, ctx, broken)
        finally:
            if held:
                self.budget.give(held)

    def _may_resend(self, failed: Retry) -> bool:
        """Whether a bodiless GET/HEAD/OPTIONS whose call failed before any answer byte goes
        out once more: only for a failed connection, and within the retry budget."""
        return failed.reason in RESEND_REASONS and self.upstream.guards[PAY_API].spend_retry()

    async def _request_body(
        self, request: web.Request, headers: CIMultiDict[str], call: Call
    ) -> tuple[bytes | AsyncIterator[bytes] | None, int]:
        """The body to send to Gini, and the bytes of the buffer budget it holds."""
        length = request.content_length
        if length is not None and length > self.max_body:
            raise PayloadTooLarge
        if not request.body_exists:
            return None, 0
        content_type = request.headers.get("Content-Type", "")
        if is_json_type(content_type) and (length is None or length <= self.max_rewrite):
            return await self._json_body(request, length, call)
        if length is not None and length <= SMALL_BODY:
            body, _ = await read_bounded(request.content, length, self.body_pause)
            return body, 0
        if length is not None:
            headers["Content-Length"] = str(length)  # keep the caller's framing, no chunking
        return self._stream_body(request, b"", call), 0

    async def _json_body(
        self, request: web.Request, length: int | None, call: Call
    ) -> tuple[bytes | AsyncIterator[bytes], int]:
        """A JSON body, rewritten when it fits `max_rewrite_bytes`. Unless small, it counts
        against the buffer budget (as received and rewritten) before it is read; refused, it is
        left unread and the connection closed."""
        size = 2 * (length if length is not None else self.max_rewrite)
        held = min(size, self.budget.limit) if size > UNCOUNTED else 0
        if held:
            try:
                await self.budget.take(held)
            except Overloaded as refused:
                refused.headers["Connection"] = "close"
                raise
        try:
            prefix, complete = await read_bounded(
                request.content, self.max_rewrite, self.body_pause
            )
        except BaseException:
            if held:
                self.budget.give(held)
            raise
        if complete:
            return self.to_upstream.json(prefix), held
        return self._stream_body(request, prefix, call), held

    async def _stream_body(
        self, request: web.Request, prefix: bytes, call: Call
    ) -> AsyncIterator[bytes]:
        sent = len(prefix)
        if prefix:
            yield prefix
        while True:
            try:
                chunk = await read_paced(request.content, STREAM_CHUNK, self.body_pause)
            except TimeoutError:
                # This runs in aiohttp's upload task: the call fails as a client error, the
                # upstream connection is closed, not pooled, and the caller gets this instead.
                call.refusal = self._body_timeout()
                raise
            if not chunk:
                return
            sent += len(chunk)
            if sent > self.max_body:
                call.refusal = PayloadTooLarge()
                raise call.refusal
            yield chunk

    def _body_timeout(self) -> RequestTimeout:
        """The caller paused its body longer than `client_timeouts.body_seconds`."""
        self.upstream.metrics.client_timeout("body")
        # The rest of the body will not be read: the connection cannot carry another request.
        return RequestTimeout(headers={"Connection": "close"})


# A body sent without a Content-Type stays without one (aiohttp would add octet-stream).
_NO_CONTENT_TYPE = ("Content-Type",)
