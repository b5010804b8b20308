"""Per-request bookkeeping shared by the middleware, the handlers and the access log."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from proxy.upstream import PAY_API

log = logging.getLogger("proxy.relay")


class RequestContext:
    """What one request did: its id, route template, upstream timing and relay state."""

    __slots__ = (
        "body_timed_out",
        "body_too_large",
        "bytes_out",
        "cache_key",
        "cache_template",
        "gini_request_id",
        "request_id",
        "response_started",
        "route",
        "upstream_seconds",
    )

    def __init__(self, request_id: str, route: str):
        self.request_id = request_id
        self.route = route
        self.upstream_seconds: float | None = None
        self.gini_request_id: str | None = None
        self.bytes_out = 0
        self.body_too_large = False
        self.body_timed_out = False  # the caller paused its streamed body too long
        self.response_started: web.StreamResponse | None = None
        self.cache_template: str | None = None  # set on a response-cache miss: store under
        self.cache_key: str | None = None

    @staticmethod
    def of(request: web.Request) -> RequestContext:
        """The context the middleware attached to `request`."""
        return request[CONTEXT]

    def abort(
        self, request: web.Request, exc: BaseException, upstream_error: Callable[[str, str], None]
    ) -> None:
        """Cut the caller's connection after a relay failed with headers already sent.

        Closing (rather than finishing the body) is what tells the caller the body is short:
        a clean end of a chunked body would look complete.
        """
        client_gone = isinstance(exc, ConnectionResetError)
        log.log(
            logging.DEBUG if client_gone else logging.WARNING,
            "caller went away during the answer" if client_gone else "upstream answer broke off",
            extra={"request_id": self.request_id, "route": self.route, "error": type(exc).__name__},
        )
        if not client_gone:
            upstream_error(PAY_API, "disconnect")
        if request.transport is not None:
            request.transport.close()


CONTEXT: web.RequestKey[RequestContext] = web.RequestKey("gini_proxy_context", RequestContext)
