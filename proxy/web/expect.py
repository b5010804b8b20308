"""`Expect: 100-continue`: invite the body only when the proxy can accept it.

aiohttp answers the expectation before any middleware or handler runs, through the route's
expect handler, and its default one always sends `100 Continue`. For a declared
`Content-Length` over `max_body_bytes` that invites an upload whose answer is already known
to be 413. This handler stays silent then, so the handler's 413 `payload_too_large` is the
first and only answer and a well-behaved client never sends the body. The same holds for a
caller without a valid inbound key: authentication comes first, and its 401 is the only answer
(the body is never invited, and the connection closes). Other expectations are
ignored instead of getting aiohttp's plain-text 417 (RFC 9110 allows either); `Expect` is
never forwarded to Gini.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http import HttpVersion11

from proxy.errors import ProxyError

ExpectHandler = Callable[[web.Request], Awaitable[None]]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def expect_handler(
    max_body: int, authenticated: Callable[[web.Request], object] | None = None
) -> ExpectHandler:
    """The expect handler for every route of the proxy listener; `authenticated` is the
    inbound-auth predicate (`middleware.inbound_check`), None without inbound auth."""

    async def expect(request: web.Request) -> None:
        if request.version != HttpVersion11:
            return  # HTTP/1.0 has no interim answers
        length = request.content_length
        if length is not None and length > max_body:
            return  # no 100: the 413 follows at once, before any body byte is read
        if authenticated is not None:
            try:
                if not authenticated(request):
                    return  # no 100: the handler's 401 follows at once
            except ProxyError:
                return  # a duplicated key header: the handler answers 400
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(_CONTINUE)
            # As aiohttp's own handler does: the 100 is not the start of the answer, and the
            # parser-error path relies on output_size to know whether an answer began.
            request.writer.output_size = 0

    return expect
