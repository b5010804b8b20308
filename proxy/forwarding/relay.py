"""The answer side of flow 1: Gini's answer (fresh or cached) back to the caller.

Headers are filtered and `Location`-rewritten, JSON bodies up to `max_rewrite_bytes` get their
Gini URLs rewritten to `public_url`, anything else streams through in chunks. Answers of
allow-listed routes are stored in and served from the response cache, through the same path,
so a cached answer differs from a fresh one only by `Age` and `X-Cache`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

from aiohttp import StreamReader, web
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.forwarding.body import SMALL_BODY, STREAM_CHUNK, read_bounded, recode_json
from proxy.forwarding.rewrite import (
    CREDENTIAL_ANSWER_HEADERS,
    NEVER_RETURN,
    UrlRewriter,
    drop_headers,
    is_json_type,
)
from proxy.web.context import RequestContext

if TYPE_CHECKING:  # the cache and its backends load only when `response_cache` is configured
    from proxy.forwarding.cache import ResponseCache

_NO_BODY_STATUSES = frozenset({204, 304})
_DROP_RETURN = tuple(sorted(NEVER_RETURN))
_CREDENTIALS_RAW = frozenset(name.encode("ascii") for name in CREDENTIAL_ANSWER_HEADERS)


class Answer(Protocol):
    """What the relay needs of an upstream answer (aiohttp's ClientResponse has it)."""

    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def headers(self) -> CIMultiDictProxy[str]: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def content(self) -> StreamReader: ...
    @property
    def raw_headers(self) -> tuple[tuple[bytes, bytes], ...]: ...


class Relay:
    """Builds the caller's response; one instance per Forwarder."""

    def __init__(
        self, to_public: UrlRewriter, max_rewrite: int, cache: ResponseCache | None, timeout: float
    ):
        self.to_public = to_public
        self.max_rewrite = max_rewrite
        self.cache = cache
        self.timeout = timeout

    def headers(self, upstream: Mapping[str, str], ctx: RequestContext) -> CIMultiDict[str]:
        """Gini's headers minus hop-by-hop and recomputed ones, with URLs rewritten."""
        headers = drop_headers(upstream, _DROP_RETURN)
        for name in ("Location", "Content-Location"):
            value = headers.get(name)
            if value is not None:
                headers[name] = self.to_public.url(value)
        if ctx.gini_request_id is not None:
            headers["X-Gini-Request-Id"] = ctx.gini_request_id
        headers["X-Request-Id"] = ctx.request_id
        return headers

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
        self,
        request: web.Request,
        ctx: RequestContext,
        answer: Answer,
        deadline: asyncio.Timeout,
    ) -> web.StreamResponse:
        """Relay a fresh upstream answer, storing it when its route is cached."""
        headers = self.headers(answer.headers, ctx)
        length = answer.content_length
        if request.method == "HEAD" or answer.status in _NO_BODY_STATUSES:
            if length is not None and request.method == "HEAD":
                headers["Content-Length"] = str(length)
            return web.Response(status=answer.status, reason=answer.reason, headers=headers)
        prefix = b""
        if ctx.cache_key is not None:
            headers["X-Cache"] = "MISS"
            stored = await self._store(ctx, answer, headers)
            if isinstance(stored, web.Response):
                return stored
            prefix = stored  # read for the cache, but it could not be stored
        return await self._body(request, ctx, answer, headers, prefix, deadline)

    async def _body(
        self,
        request: web.Request,
        ctx: RequestContext,
        answer: Answer,
        headers: CIMultiDict[str],
        prefix: bytes,
        deadline: asyncio.Timeout,
    ) -> web.StreamResponse:
        """The body after `prefix` (already read): rewritten JSON, one small read, or a stream."""
        length = answer.content_length
        json_type = is_json_type(answer.headers.get("Content-Type", ""))
        if json_type and (length or 0) <= self.max_rewrite and len(prefix) <= self.max_rewrite:
            rest, complete = await read_bounded(answer.content, self.max_rewrite - len(prefix))
            if complete:
                return self.buffered(answer.status, answer.reason, headers, prefix + rest)
            return await self._stream(request, ctx, answer, headers, prefix + rest, deadline)
        if not prefix and length is not None and length <= SMALL_BODY:
            body = await answer.content.read()
            return web.Response(
                status=answer.status, reason=answer.reason, headers=headers, body=body
            )
        return await self._stream(request, ctx, answer, headers, prefix, deadline)

    async def _stream(
        self,
        request: web.Request,
        ctx: RequestContext,
        answer: Answer,
        headers: CIMultiDict[str],
        prefix: bytes,
        deadline: asyncio.Timeout,
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
        if answer.content_length is not None:
            response.content_length = answer.content_length
        await response.prepare(request)
        ctx.response_started = response
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

    # -- response cache -------------------------------------------------------------------

    async def lookup(
        self,
        request: web.Request,
        ctx: RequestContext,
        identifier: str,
        upstream_headers: Mapping[str, str],
    ) -> web.StreamResponse | None:
        """Serve an allow-listed GET/HEAD from the cache, or note the key to store under."""
        cache = self.cache
        assert cache is not None
        template = cache.route(request.method, request.path)
        if template is None:
            return None
        if request.body_exists:
            cache.count(template, "bypass")
            return None
        key = cache.key(
            template,
            request.raw_path,
            identifier,
            upstream_headers.get("Accept", ""),
            upstream_headers.get("Accept-Encoding") != "identity",
        )
        entry = await cache.get(template, key)
        if entry is None:
            cache.count(template, "miss")
            ctx.cache_template, ctx.cache_key = template, key
            return None
        cache.count(template, "hit")
        ctx.gini_request_id = entry.headers.get("X-Request-Id")
        headers = self.headers(entry.headers, ctx)
        age = (datetime.now(UTC).replace(tzinfo=None) - entry.created_at).total_seconds()
        headers["Age"] = str(max(0, int(age)))
        headers["X-Cache"] = "HIT"
        return self.buffered(entry.status, entry.reason, headers, await entry.read())

    async def _store(
        self, ctx: RequestContext, answer: Answer, headers: CIMultiDict[str]
    ) -> web.Response | bytes:
        """Read a storable answer whole, store it, and answer from memory.

        Returns the bytes already read (maybe none) when the answer cannot be stored.
        """
        cache = self.cache
        assert cache is not None
        assert ctx.cache_template is not None
        assert ctx.cache_key is not None
        limit = cache.config.max_entry_bytes
        length = answer.content_length
        if not cache.storable(ctx.cache_template, answer.status, answer.headers):
            return b""
        if length is not None and length > limit:
            return b""
        body, complete = await read_bounded(answer.content, limit)
        if not complete:
            return body
        cache.put(
            ctx.cache_template,
            ctx.cache_key,
            cache.entry(
                answer.status, answer.reason or "", _without_credentials(answer.raw_headers), body
            ),
        )
        return self.buffered(answer.status, answer.reason, headers, body)


def _without_credentials(
    raw: tuple[tuple[bytes, bytes], ...],
) -> tuple[tuple[bytes, bytes], ...]:
    """Raw headers minus the credential-shaped ones, so a shared cache never holds them (a
    hit is filtered again on the way out, like a fresh answer)."""
    return tuple(pair for pair in raw if pair[0].lower() not in _CREDENTIALS_RAW)
