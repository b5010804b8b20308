"""The answer side of flow 1: Gini's answer (fresh or cached) back to the caller.

Headers are filtered and `Location`-rewritten, JSON bodies up to `max_rewrite_bytes` get their
Gini URLs rewritten to `public_url`, anything else streams through in chunks. Answers of
allow-listed routes are stored by the response cache on the way, and cached answers go out
through the same path, so a cached answer differs from a fresh one only by `Age` and `X-Cache`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy.forwarding.body import SMALL_BODY, STREAM_CHUNK, read_bounded, recode_json
from proxy.forwarding.budget import UNCOUNTED, BufferBudget
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

    @property
    def max_entry_bytes(self) -> int: ...

    async def store(self, miss: Miss, answer: aiohttp.ClientResponse) -> tuple[bytes, bool]: ...


@dataclass(slots=True)
class Outgoing:
    """One answer on its way out: the caller's request, Gini's call (none for a cache hit),
    the caller's headers, and the bytes of the buffer budget it holds."""

    request: web.Request
    ctx: RequestContext
    call: Call | None
    headers: CIMultiDict[str]
    held: int = 0


class Relay:
    """Builds the caller's response; one instance per Forwarder.

    `build` is the one place an answer held whole in memory becomes a response, and `_stream`
    the one place a streamed answer starts. An answer that holds more than `UNCOUNTED` bytes
    (as received plus its rewritten copy) counts against the buffer budget and is sent here,
    so the bytes are given back once it is out, on every way out.
    """

    def __init__(
        self,
        to_public: UrlRewriter,
        max_rewrite: int,
        cache: AnswerStore | None,
        timeout: float,
        budget: BufferBudget | None = None,
    ):
        self.to_public = to_public
        self.max_rewrite = max_rewrite
        self.cache = cache
        self.timeout = timeout
        # A relay of its own (tests of headers only) gets a budget of its own.
        self.budget = budget if budget is not None else BufferBudget(64 << 20)

    def headers(self, upstream: Mapping[str, str], ctx: RequestContext) -> CIMultiDict[str]:
        """Gini's headers minus hop-by-hop and recomputed ones, with URLs rewritten."""
        headers = _DROP_RETURN(upstream)
        for name in ("Location", "Content-Location"):
            value = headers.get(name)
            if value is not None:
                headers[name] = self.to_public.url(value)
        if ctx.gini_request_id is not None:
            headers["X-Gini-Request-Id"] = ctx.gini_request_id
        return headers  # X-Request-Id: set by the wrapper, or by `_start` before sending

    def rewrite(self, headers: CIMultiDict[str], body: bytes) -> bytes | None:
        """`body` as sent to the caller when that differs: a JSON body up to `max_rewrite` with
        Gini's URLs rewritten (and decompressed to do so); None to send it as it is."""
        if not body or len(body) > self.max_rewrite:
            return None
        if not is_json_type(headers.get("Content-Type", "")):
            return None
        encoding = headers.get("Content-Encoding", "identity").lower()
        return recode_json(body, encoding, self.max_rewrite, self.to_public.json)

    def build(
        self,
        status: int,
        reason: str | None,
        headers: CIMultiDict[str],
        body: bytes | None,
        rewritten: bytes | None = None,
    ) -> web.Response:
        """An answer held whole in memory: `body`, or `rewritten` (identity-encoded) instead."""
        if rewritten is not None:
            headers.popall("Content-Encoding", None)
            body = rewritten
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
            return self.build(answer.status, answer.reason, headers, None)
        content = answer.content
        if miss is None and length is not None and length <= SMALL_BODY and content.is_eof():
            # A small answer already buffered whole (it arrived with its head): answered from
            # memory, without `_body`'s reads (2 % of a request).
            body = content.read_nowait()
            rewritten = self.rewrite(headers, body)
            if rewritten is None or len(body) + len(rewritten) <= UNCOUNTED:
                return self.build(answer.status, answer.reason, headers, body, rewritten)
            out = Outgoing(request, ctx, call, headers)
            return await self._sent(
                out, self._whole(out, answer.status, answer.reason, body, rewritten)
            )
        out = Outgoing(request, ctx, call, headers)
        return await self._sent(out, self._fresh(out, miss))

    async def cached(
        self, request: web.Request, ctx: RequestContext, hit: Hit
    ) -> web.StreamResponse:
        """A stored answer, relayed like a fresh one."""
        entry = hit.entry
        ctx.gini_request_id = entry.headers.get("X-Request-Id")
        headers = self.headers(entry.headers, ctx)
        age = (datetime.now(UTC).replace(tzinfo=None) - entry.created_at).total_seconds()
        headers["Age"] = str(max(0, int(age)))
        headers["X-Cache"] = "HIT"
        out = Outgoing(request, ctx, None, headers)
        body = await entry.read()
        return await self._sent(out, self._whole(out, entry.status, entry.reason, body, None))

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

    async def _sent(
        self, out: Outgoing, sending: Coroutine[Any, Any, web.StreamResponse]
    ) -> web.StreamResponse:
        """`sending`'s answer; whatever of the budget `out` came to hold is given back once it
        is out, also when it failed or was cancelled."""
        try:
            return await sending
        finally:
            if out.held:
                self.budget.give(out.held)

    async def _fresh(self, out: Outgoing, miss: Miss | None) -> web.StreamResponse:
        """Gini's body, stored first under `miss` if it can be, then relayed by `_body`."""
        assert out.call is not None
        answer = out.call.response
        prefix = b""
        if miss is not None and self.cache is not None:
            out.headers["X-Cache"] = "MISS"
            await self._hold(out, answer.content_length, self.cache.max_entry_bytes)
            prefix, stored = await self.cache.store(miss, answer)
            if stored:
                return await self._whole(out, answer.status, answer.reason, prefix, None)
            self._shrink(out, 2 * len(prefix))  # not storable: keep what was read, if anything
        return await self._body(out, prefix)

    async def _hold(self, out: Outgoing, length: int | None, limit: int) -> None:
        """Count a body of `length` bytes (`limit` when unknown) and its rewritten copy before
        reading it, unless it is small; waits for room, or raises `Overloaded`."""
        size = 2 * (min(length, limit) if length is not None else limit)
        if size <= UNCOUNTED:
            return
        more = min(size, self.budget.limit) - out.held
        if more > 0:
            await self.budget.take(more)
            out.held += more

    def _shrink(self, out: Outgoing, counted: int) -> None:
        """Give back what `out` holds beyond `counted` bytes."""
        if out.held > counted:
            self.budget.give(out.held - counted)
            out.held = counted

    async def _whole(
        self,
        out: Outgoing,
        status: int,
        reason: str | None,
        body: bytes,
        rewritten: bytes | None,
    ) -> web.StreamResponse:
        """An answer held whole: built and returned if small, else counted (topping up what is
        already held), built and sent here. `rewritten`: `rewrite`'s result if already known."""
        if rewritten is None:
            rewritten = self.rewrite(out.headers, body)
        size = len(body) + (len(rewritten) if rewritten is not None else 0)
        counted = min(size, self.budget.limit) if size > UNCOUNTED else 0
        self._shrink(out, counted)  # `_hold` may have counted more than arrived
        more = counted - out.held
        if not counted:
            return self.build(status, reason, out.headers, body, rewritten)
        if more > 0 and not self.budget.take_now(more):
            # The rewritten copy exists only since `rewrite` (no await since): drop it while
            # waiting, so waiting answers hold only bytes the budget counts.
            rewritten = None
            await self.budget.take(more)
            out.held += more
            rewritten = self.rewrite(out.headers, body)
        elif more > 0:
            out.held += more
        response = self.build(status, reason, out.headers, body, rewritten)
        await self._start(out, response)
        await response.write_eof()
        return response

    async def _body(self, out: Outgoing, prefix: bytes) -> web.StreamResponse:
        """The body after `prefix` (already read): rewritten JSON, one small read, or a stream."""
        assert out.call is not None
        answer = out.call.response
        length = answer.content_length
        json_type = is_json_type(answer.headers.get("Content-Type", ""))
        if json_type and (length or 0) <= self.max_rewrite and len(prefix) <= self.max_rewrite:
            await self._hold(out, length, self.max_rewrite)
            rest, complete = await read_bounded(answer.content, self.max_rewrite - len(prefix))
            if complete:
                return await self._whole(out, answer.status, answer.reason, prefix + rest, None)
            return await self._stream(out, prefix + rest)
        if not prefix and length is not None and length <= SMALL_BODY:
            body = await answer.content.read()
            return self.build(answer.status, answer.reason, out.headers, body)
        return await self._stream(out, prefix)

    async def _start(self, out: Outgoing, response: web.StreamResponse) -> None:
        """Send the head of an answer this relay writes itself (the wrapper only sees it
        started): from here a failure cuts the connection (`abort`)."""
        out.headers["X-Request-Id"] = out.ctx.request_id
        if out.call is not None and out.call.deadline.when() is not None:
            out.call.deadline.reschedule(None)  # the deadline is Gini's, not a slow caller's
        await response.prepare(out.request)
        out.ctx.response_started = response
        if out.call is not None:
            out.call.relaying = True

    async def _stream(self, out: Outgoing, prefix: bytes) -> web.StreamResponse:
        assert out.call is not None
        answer, ctx, deadline = out.call.response, out.ctx, out.call.deadline
        timed = deadline.when() is not None  # before `_start` pauses it
        response = web.StreamResponse(
            status=answer.status, reason=answer.reason, headers=out.headers
        )
        if answer.content_length is not None:
            response.content_length = answer.content_length
        await self._start(out, response)
        if prefix:
            await response.write(prefix)
            ctx.bytes_out += len(prefix)
        loop = asyncio.get_running_loop()
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
