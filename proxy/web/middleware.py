"""What wraps every handler of the proxy listener: request id, inbound auth, errors, metrics,
access log.

One layer instead of four: each aiohttp middleware costs a measurable share of the hot path,
and these concerns all wrap the same span of the request anyway.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.config import Config, InboundAuthConfig
from proxy.errors import (
    BadRequest,
    InternalError,
    MethodNotAllowed,
    NotFound,
    ProxyError,
    Unauthenticated,
    error_answer,
)
from proxy.identity import CallerIdentity, IdentifierDeriver
from proxy.lifecycle import Lifecycle
from proxy.log import end_request_scope, request_scope
from proxy.metrics import Metrics
from proxy.web.accesslog import AccessLog
from proxy.web.context import CONTEXT, REQUEST_ID, RequestContext
from proxy.web.routes import RouteTable
from proxy.web.telemetry import RequestTelemetry

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger("proxy.errors")

DUPLICATE_KEY = "The proxy key header is sent more than once."
CLIENT_CLOSED = 499  # nginx's convention for "the caller went away"; metrics only


# Ids must be unique, not secret: a random per-process prefix and a counter, instead of a
# getrandom() system call per request.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    """32 hex characters, unique across processes and requests."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


def error_response(error: ProxyError, request_id: str) -> web.Response:
    """The contract's JSON error (`errors.error_answer`) as an aiohttp response."""
    headers, body = error_answer(error, request_id)
    closes = headers.pop("Connection", None) is not None
    response = web.Response(status=error.status, headers=headers, body=body)
    if closes:
        response.force_close()  # aiohttp writes `Connection: close` itself then
    return response


def _as_proxy_error(exc: web.HTTPException) -> ProxyError:
    if exc.status == 405:
        return MethodNotAllowed(headers={"Allow": exc.headers.get("Allow", "")})
    return NotFound("No such endpoint on this proxy.")


class InboundKeys:
    """The inbound keys in force, each with its caller name (None for a bare key). A reload
    replaces `keys` whole (one attribute store), so a request reads either the old tuple or
    the new one, never a mix, and takes no lock."""

    __slots__ = ("keys",)

    def __init__(self, auth: InboundAuthConfig):
        self.keys = tuple((key.encode(), key.caller) for key in auth.keys)


def inbound_check(
    auth: InboundAuthConfig | None, current: InboundKeys | None = None
) -> Callable[[web.Request], bool | str] | None:
    """A predicate for `inbound_auth` (None when not configured): does the caller hold a key?
    The answer is the key's caller name when it has one, else a bool.

    `current` holds the keys (reloadable); without it they are fixed at build time.
    """
    if auth is None:
        return None
    header = auth.header
    # Many stacks read `_` as `-`: an underscore spelling is a second copy of the header.
    underscored = header.replace("-", "_")
    holder = current if current is not None else InboundKeys(auth)

    def authenticated(request: web.Request) -> bool | str:
        """The caller's name, or True, with exactly one key header holding a key; raises
        `BadRequest` for two."""
        headers = request.headers
        values = headers.getall(header, ())
        copies = len(values)
        if underscored != header and underscored in headers:
            copies += len(headers.getall(underscored))
        if copies > 1:
            # Which copy a hop in front of us would read is unknown: refuse, never pick one.
            raise BadRequest(DUPLICATE_KEY)
        offered = (values[0] if values else "").encode("utf-8", "surrogateescape")
        # Compare against every key, always: timing must not reveal which one (or none) matched.
        matched: bool | str = False
        for key, name in holder.keys:
            if hmac.compare_digest(offered, key) and offered:
                matched = name or True
        return matched

    return authenticated


def _admitter(
    authenticated: Callable[[web.Request], bool | str] | None,
) -> Callable[[web.Request], str | None] | None:
    """The inbound check as the observer runs it: the caller's name (None for a bare key), or
    `Unauthenticated` raised."""
    if authenticated is None:
        return None

    def admit(request: web.Request) -> str | None:
        verdict = authenticated(request)
        if not verdict:
            raise Unauthenticated
        return None if verdict is True else verdict

    return admit


def observer(  # noqa: PLR0915 - the one wrapper's statements (see below)
    config: Config,
    metrics: Metrics,
    routes: RouteTable,
    lifecycle: Lifecycle,
    access: AccessLog,
    inbound_keys: InboundKeys | None = None,
    caller: CallerIdentity | None = None,
    telemetry: RequestTelemetry | None = None,
) -> Callable[[Handler], Handler]:
    """`wrap(handler)`: the handler inside the request id, inbound auth, draining, the error
    answer, metrics, the access log and the log scope. Every config-dependent choice is made
    here, once.

    The proxy listener wraps each route's handler with it instead of installing an aiohttp
    middleware: aiohttp runs any middleware through two more layers per request (a partial
    and its current-app fixer), 1.7 % of a flow-1 request's instructions (callgrind).
    """
    if caller is None:
        caller = CallerIdentity(
            config.identity.header, IdentifierDeriver(config.identity.hmac_key.encode())
        )
    admit = _admitter(inbound_check(config.inbound_auth, inbound_keys))
    log_every = config.logging.access_log and config.logging.access_log_sample_rate >= 1.0
    sample_rate = config.logging.access_log_sample_rate if config.logging.access_log else 0.0

    def wrap(handler: Handler) -> Handler:
        # One frame on purpose (see above): the branches are the concerns it folds together.
        async def observed(request: web.Request) -> web.StreamResponse:  # noqa: PLR0912
            observation = None
            started = time.perf_counter()
            request_id = request.headers.get("X-Request-Id")
            if request_id is None or not REQUEST_ID.fullmatch(request_id):
                request_id = new_request_id()
            ctx = RequestContext(request_id, routes.match(request.path))
            request[CONTEXT] = ctx
            # Every copy of the identity header is hidden, also when duplicates get the request
            # refused.
            user_values = caller.values(request.headers)
            scope = request_scope(request_id, user_values)
            lifecycle.in_flight += 1
            status = CLIENT_CLOSED
            try:
                try:
                    if admit is not None:
                        ctx.caller = admit(request)
                    if lifecycle.refusing:
                        raise lifecycle.draining_error()
                    if telemetry is not None:
                        observation = telemetry.begin(request, ctx, user_values)
                    response = await handler(request)
                except ProxyError as exc:
                    response = error_response(exc, request_id)
                except web.HTTPException as exc:  # the router's 404/405 for /_proxy/ paths
                    response = error_response(_as_proxy_error(exc), request_id)
                except (asyncio.CancelledError, ConnectionResetError):
                    raise  # the caller went away; nothing to answer
                except Exception:
                    log.exception(
                        "unhandled error", extra={"request_id": request_id, "route": ctx.route}
                    )
                    response = error_response(InternalError(), request_id)
                status = response.status
                if not ctx.bytes_out:
                    ctx.bytes_out = response.content_length or 0
                if not response.prepared:
                    response.headers["X-Request-Id"] = request_id
                return response
            finally:
                lifecycle.request_done()
                seconds = time.perf_counter() - started
                metrics.observe_request(request.method, ctx.route, status, seconds)
                if log_every or (sample_rate and random.random() < sample_rate):  # noqa: S311
                    access.write(request, ctx, status, seconds)
                if observation is not None:
                    observation.end(status, seconds)
                end_request_scope(scope)

        return observed

    return wrap
