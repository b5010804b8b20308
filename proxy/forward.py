"""Flow 1: relay a caller's request to the Pay API with Gini credentials, and the answer back.

Everything that depends only on the config (the Basic header, header drop sets, rewriters,
the upstream base) is computed once in `Forwarder.__init__`; per request the work is header
filtering, one memoised HMAC and the relay itself.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .body import read_bounded, recode_json
from .config import Config
from .context import RequestContext
from .errors import BadRequest, MethodNotAllowed, PayloadTooLarge
from .identity import IdentifierDeriver, validate_user_id
from .rewrite import NEVER_FORWARD, NEVER_RETURN, UrlRewriter, filter_headers, is_json_type
from .upstream import PAY_API, Upstream

# Bodies up to this size are read whole before relaying: one write instead of a chunk loop.
SMALL_BODY = 64 * 1024
STREAM_CHUNK = 256 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
# TRACE would echo the injected credentials back to the caller; CONNECT would open a tunnel.
REFUSED_METHODS = frozenset({"TRACE", "TRACK", "CONNECT"})


def basic_auth(client_id: str, secret: str) -> str:
    """The `Authorization` value for Gini's client credentials."""
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode("ascii")


class Forwarder:
    """The flow-1 handler: one instance per app, called for every Pay API request."""

    def __init__(self, config: Config, upstream: Upstream, deriver: IdentifierDeriver):
        self.upstream = upstream
        self.deriver = deriver
        self.identity_header = config.identity.header
        self.base = config.upstream.pay_api
        base = URL(self.base)
        self._origin = (base.scheme, base.raw_host, base.port)
        self.basic = basic_auth(config.client.id, config.client.secret.value)
        drop = set(NEVER_FORWARD) | {self.identity_header.lower(), "accept-encoding"}
        if config.inbound_auth is not None:
            drop.add(config.inbound_auth.header.lower())
        self.drop = frozenset(drop)
        self.to_public = UrlRewriter(self.base, config.public_url)
        self.to_upstream = UrlRewriter(config.public_url, self.base)
        self.max_body = config.max_body_bytes
        self.max_rewrite = config.max_rewrite_bytes

    def upstream_url(self, raw_target: str) -> URL:
        """The Pay API URL for a request target; anything but an origin-form path is refused.

        The target is appended to the base as text, never resolved against it, so `//host`,
        `@host`, `%2F` or `..` can only ever name a path on the configured upstream.
        """
        if not raw_target.startswith("/"):
            raise BadRequest  # absolute-form (`http://evil/`) or asterisk-form (`*`)
        url = URL(self.base + raw_target, encoded=True)
        if (url.scheme, url.raw_host, url.port) != self._origin:  # belt and braces
            raise BadRequest
        return url

    def upstream_headers(
        self, request: web.Request, ctx: RequestContext, user_id: str
    ) -> CIMultiDict[str]:
        headers = CIMultiDict(filter_headers(request.headers.items(), self.drop))
        # Only encodings this proxy can undo for URL rewriting are offered to Gini.
        accept = request.headers.get("Accept-Encoding", "").lower()
        if "gzip" in accept or "deflate" in accept:
            headers["Accept-Encoding"] = "gzip, deflate"
        headers["Authorization"] = self.basic
        headers["X-User-Identifier"] = self.deriver(user_id)
        headers["X-Request-Id"] = ctx.request_id
        return headers

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The flow-1 handler."""
        ctx = RequestContext.of(request)
        if request.method in REFUSED_METHODS:
            raise MethodNotAllowed("This method is never forwarded to Gini.")
        user_id = validate_user_id(request.headers.get(self.identity_header))
        url = self.upstream_url(request.raw_path)
        headers = self.upstream_headers(request, ctx, user_id)
        data = await self._request_body(request, ctx, headers)
        started = time.perf_counter()
        try:
            async with self.upstream.session.request(
                request.method, url, headers=headers, data=data, allow_redirects=False
            ) as answer:
                ctx.upstream_seconds = time.perf_counter() - started
                self.upstream.metrics.observe_upstream(PAY_API, ctx.upstream_seconds)
                ctx.gini_request_id = answer.headers.get("X-Request-Id")
                if answer.status >= 500:
                    self.upstream.metrics.upstream_error(PAY_API, "status_5xx")
                return await self._relay(request, ctx, answer)
        except (aiohttp.ClientError, TimeoutError) as exc:
            if isinstance(exc.__cause__, PayloadTooLarge) or ctx.body_too_large:
                raise PayloadTooLarge from None
            if ctx.response_started:
                # Headers are out: all that is left is to cut the connection.
                ctx.abort(request, exc, self.upstream.metrics.upstream_error)
                return ctx.response_started
            self.upstream.fail(PAY_API, exc)

    async def _request_body(
        self, request: web.Request, ctx: RequestContext, headers: CIMultiDict[str]
    ) -> bytes | AsyncIterator[bytes] | None:
        length = request.content_length
        if length is not None and length > self.max_body:
            raise PayloadTooLarge
        if not request.body_exists:
            return None
        content_type = request.headers.get("Content-Type", "")
        if is_json_type(content_type) and (length is None or length <= self.max_rewrite):
            prefix, complete = await read_bounded(request.content, self.max_rewrite)
            if complete:
                return self.to_upstream.json(prefix)
            return self._stream_body(request, prefix, ctx)
        if length is not None and length <= SMALL_BODY:
            return await request.read()
        if length is not None:
            headers["Content-Length"] = str(length)  # keep the caller's framing, no chunking
        return self._stream_body(request, b"", ctx)

    async def _stream_body(
        self, request: web.Request, prefix: bytes, ctx: RequestContext
    ) -> AsyncIterator[bytes]:
        sent = len(prefix)
        if prefix:
            yield prefix
        async for chunk in request.content.iter_chunked(STREAM_CHUNK):
            sent += len(chunk)
            if sent > self.max_body:
                ctx.body_too_large = True
                raise PayloadTooLarge
            yield chunk

    def _response_headers(
        self, answer: aiohttp.ClientResponse, ctx: RequestContext
    ) -> CIMultiDict[str]:
        headers = CIMultiDict(filter_headers(answer.headers.items(), NEVER_RETURN))
        for name in ("Location", "Content-Location"):
            value = headers.get(name)
            if value is not None:
                headers[name] = self.to_public.url(value)
        if ctx.gini_request_id is not None:
            headers["X-Gini-Request-Id"] = ctx.gini_request_id
        headers["X-Request-Id"] = ctx.request_id
        return headers

    async def _relay(
        self, request: web.Request, ctx: RequestContext, answer: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        headers = self._response_headers(answer, ctx)
        length = answer.content_length
        if request.method == "HEAD" or answer.status in _NO_BODY_STATUSES:
            if length is not None and request.method == "HEAD":
                headers["Content-Length"] = str(length)
            return web.Response(status=answer.status, reason=answer.reason, headers=headers)
        if is_json_type(answer.headers.get("Content-Type", "")) and (
            length is None or length <= self.max_rewrite
        ):
            body, complete = await read_bounded(answer.content, self.max_rewrite)
            if complete:
                encoding = headers.get("Content-Encoding", "identity").lower()
                recoded = recode_json(body, encoding, self.max_rewrite, self.to_public.json)
                if recoded is not None:
                    headers.popall("Content-Encoding", None)
                    body = recoded
                return web.Response(
                    status=answer.status, reason=answer.reason, headers=headers, body=body
                )
            return await self._stream(request, ctx, answer, headers, body)
        if length is not None and length <= SMALL_BODY:
            body = await answer.read()
            return web.Response(
                status=answer.status, reason=answer.reason, headers=headers, body=body
            )
        return await self._stream(request, ctx, answer, headers, b"")

    async def _stream(
        self,
        request: web.Request,
        ctx: RequestContext,
        answer: aiohttp.ClientResponse,
        headers: CIMultiDict[str],
        prefix: bytes,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
        if answer.content_length is not None:
            response.content_length = answer.content_length
        await response.prepare(request)
        ctx.response_started = response
        if prefix:
            await response.write(prefix)
            ctx.bytes_out += len(prefix)
        async for chunk in answer.content.iter_chunked(STREAM_CHUNK):
            await response.write(chunk)
            ctx.bytes_out += len(chunk)
        await response.write_eof()
        return response
