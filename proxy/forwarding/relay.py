"""The answer side of flow 1: Gini's answer (fresh or cached) back to the caller.

Headers are filtered and `Location`-rewritten, JSON bodies up to `max_rewrite_bytes` get their
Gini URLs rewritten to `public_url`, anything else streams through in chunks. Answers of
allow-listed routes are stored by the response cache on the way, and cached answers go out
through the same path, so a cached answer differs from a fresh one only by `Age` and `X-Cache`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy.forwarding.body import SMALL_BODY, STREAM_CHUNK, read_bounded, recode_json
from proxy.forwarding.rewrite import NEVER_RETURN, HeaderFilter, UrlRewriter, is_json_type
from proxy.upstream import AnswerBroken, Call
from proxy.web.context import RequestContext

if TYPE_CHECKING:  # the cache library loads only when `response_cache` is configured
    from aiohttp_client_cache.response import CachedResponse

log = logging.getLogger("proxy.relay")

_NO_BODY_STATUSES = frozenset({204, 304})
_DROP_RETURN = HeaderFilter(frozenset(NEVER_RETURN))


@dataclass(frozen=True, slots=True)
class Hit:
    """The response cache holds a fresh answer for this request."""

    entry: CachedResponse


@dataclass(frozen=True, slots=True)
class Miss:
    """The response cache holds nothing for this request yet: a storable answer goes under
    `key`."""

    template: str
    key: str


class AnswerStore(Protocol):
    """What the relay asks of the response cache (`cache.ResponseCache`)."""

    async def store(self, miss: Miss, answer: aiohttp.ClientResponse) -> tuple[bytes, bool]: ...


@dataclass(slots=True)
class Outgoing:
    """One fresh answer on its way out: the caller's request, Gini's call, the caller's
    headers."""

    request: web.Request
    ctx: RequestContext
    call: Call
    headers: CIMultiDict[str]


class Relay:
    """Builds the caller's response; one instance per Forwarder."""

    def __init__(
        self, to_public: UrlRewriter, max_rewrite: int, cache: AnswerStore | None, timeout: float
    ):
        self.to_public = to_public
        self.max_rewrite = max_rewrite
        self.cache = cache
        self.timeout = timeout

    def headers(self, upstream: Mapping[str, str], ctx: RequestContext) -> CIMultiDict[str]:
        """Gini's headers minus hop-by-hop and recomputed ones, with URLs rewritten."""
        headers = _DROP_RETURN(upstream)
        for name in ("Location", "Content-Location"):
            value = headers.get(name)
            if value is not None:
                headers[name] = self.to_public.url(value)
        if ctx.gini_request_id is not None:
            headers["X-Gini-Request-Id"] = ctx.gini_request_id
        return headers  # X-Request-Id: set by the wrapper, or by `_stream` before it starts

    def buffered(
        self, status: int, reason: str | None, headers: CIMultiDict[str], body: bytes
    ) -> web.Response:
        """A complete answer in memory, JSON URLs rewritten (decompressing gzip if needed)."""
        if body and is_json_type(headers.get("Content-Type", "")):
            encoding = headers.get("Content-Encoding", "identity").lower()
            recoded = recode_json(body, encoding, self.max_rewrite, self.to_public.json)
            if recoded is not None:
                headers.popall("Content-Encoding", None)
                body = recoded
        return web.Response(status=status, reason=reason, headers=headers, body=body)

    async def answer(
        self, request: web.Request, ctx: RequestContext, call: Call, miss: Miss | None = None
    ) -> web.StreamResponse:
        """Relay Gini's answer to `call`, storing it under `miss` when its route is cached."""
        answer = call.response
        headers = self.headers(answer.headers, ctx)
        length = answer.content_length
        if request.method == "HEAD" or answer.status in _NO_BODY_STATUSES:
            if length is not None and request.method == "HEAD":
                headers["Content-Length"] = str(length)
            return web.Response(status=answer.status, reason=answer.reason, headers=headers)
        content = answer.content
        if miss is None and length is not None and content.is_eof():
            # A sized answer already buffered whole (small answers arrive with their head):
            # answered from memory, as `_body` would, without its reads (2 % of a request).
            body = content.read_nowait()
            if len(body) <= self.max_rewrite:
                return self.buffered(answer.status, answer.reason, headers, body)
            return web.Response(
                status=answer.status, reason=answer.reason, headers=headers, body=body
            )
        prefix = b""
        if miss is not None and self.cache is not None:
            headers["X-Cache"] = "MISS"
            prefix, stored = await self.cache.store(miss, answer)
            if stored:
                return self.buffered(answer.status, answer.reason, headers, prefix)
        return await self._body(Outgoing(request, ctx, call, headers), prefix)

    async def cached(self, ctx: RequestContext, hit: Hit) -> web.Response:
        """A stored answer, relayed like a fresh one."""
        entry = hit.entry
        ctx.gini_request_id = entry.headers.get("X-Request-Id")
        headers = self.headers(entry.headers, ctx)
        age = (datetime.now(UTC).replace(tzinfo=None) - entry.created_at).total_seconds()
        headers["Age"] = str(max(0, int(age)))
        headers["X-Cache"] = "HIT"
        return self.buffered(entry.status, entry.reason, headers, await entry.read())

    def abort(
        self, request: web.Request, ctx: RequestContext, broken: AnswerBroken
    ) -> web.StreamResponse:
        """Cut the caller's connection after the answer broke off with headers already sent.

        Closing (rather than finishing the body) is what tells the caller the body is short:
        a clean end of a chunked body would look complete.
        """
        log.log(
            logging.DEBUG if broken.client_gone else logging.WARNING,
            "caller went away during the answer"
            if broken.client_gone
            else "upstream answer broke off",
            extra={"request_id": ctx.request_id, "route": ctx.route, "error": broken.error},
        )
        if request.transport is not None:
            request.transport.close()
        assert ctx.response_started is not None  # only a started answer can break off
        return ctx.response_started

    async def _body(self, out: Outgoing, prefix: bytes) -> web.StreamResponse:
        """The body after `prefix` (already read): rewritten JSON, one small read, or a stream."""
        answer = out.call.response
        length = answer.content_length
        json_type = is_json_type(answer.headers.get("Content-Type", ""))
        if json_type and (length or 0) <= self.max_rewrite and len(prefix) <= self.max_rewrite:
            rest, complete = await read_bounded(answer.content, self.max_rewrite - len(prefix))
            if complete:
                return self.buffered(answer.status, answer.reason, out.headers, prefix + rest)
            return await self._stream(out, prefix + rest)
        if not prefix and length is not None and length <= SMALL_BODY:
            body = await answer.content.read()
            return web.Response(
                status=answer.status, reason=answer.reason, headers=out.headers, body=body
            )
        return await self._stream(out, prefix)

    async def _stream(self, out: Outgoing, prefix: bytes) -> web.StreamResponse:
        answer, ctx, deadline = out.call.response, out.ctx, out.call.deadline
        out.headers["X-Request-Id"] = ctx.request_id  # the wrapper only sees it started
        response = web.StreamResponse(
            status=answer.status, reason=answer.reason, headers=out.headers
        )
        if answer.content_length is not None:
            response.content_length = answer.content_length
        await response.prepare(out.request)
        ctx.response_started = response
        out.call.relaying = True
        if prefix:
            await response.write(prefix)
            ctx.bytes_out += len(prefix)
        loop = asyncio.get_running_loop()
        timed = deadline.when() is not None
        while True:
            if timed:  # the deadline covers waiting for Gini, not writing to a slow caller
                deadline.reschedule(loop.time() + self.timeout)
            chunk = await answer.content.read(STREAM_CHUNK)
            if timed:
                deadline.reschedule(None)
            if not chunk:
                break
            await response.write(chunk)
            ctx.bytes_out += len(chunk)
        await response.write_eof()
        return response
