"""Per-request bookkeeping shared by the middleware, the handlers and the access log."""

from __future__ import annotations

import re

from aiohttp import web

REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
"""A caller's `X-Request-Id` that is kept as the request's id (and logged); any other is
replaced by a new one."""


class RequestContext:
    """What one request did: its id, route template, the caller's name, upstream timing, bytes
    sent, and the response once it has started (a failure can then only cut the connection)."""

    __slots__ = (
        "bytes_out",
        "caller",
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
        self.caller: str | None = None  # the inbound key's name (`name:key`), if it has one
        self.response_started: web.StreamResponse | None = None

    @staticmethod
    def of(request: web.Request) -> RequestContext:
        """The context the middleware attached to `request`."""
        return request[CONTEXT]


CONTEXT: web.RequestKey[RequestContext] = web.RequestKey("gini_proxy_context", RequestContext)
