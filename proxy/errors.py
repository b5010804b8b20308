"""The proxy's own errors: one tree, each error knows its HTTP status and public code.

Errors are raised anywhere below the HTTP boundary and turned into the contract's JSON body by
one function, `error_answer`, whoever answers: the middleware, the connection-level answers
written straight to a socket, the admin listener. Messages are written for the caller and must
never contain a secret, a token, a password or a raw user id: they are fixed sentences, not
formatted input.
"""

from __future__ import annotations

import json
from typing import ClassVar


class ProxyError(Exception):
    """Base of every error the proxy answers itself (the contract's JSON error body)."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "The proxy failed to handle this request."
    closes_connection: ClassVar[bool] = False
    """Answered with `Connection: close` even as a 5xx (every 4xx closes anyway: see
    `error_answer`)."""
    retry_after: ClassVar[str | None] = None
    """`Retry-After` seconds, only where retrying soon can succeed (a busy or closing proxy);
    never on a 4xx, which fails again the same way."""

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None):
        self.message = message or self.default_message
        self.headers = headers or {}
        self.detail: str | None = None
        """What went wrong, for the operator (a log line, `doctor`); never sent to the caller."""
        super().__init__(self.message)


class MissingUser(ProxyError):
    status = 400
    code = "missing_user"
    default_message = "The request carries no user id header."


class InvalidUser(ProxyError):
    status = 400
    code = "invalid_user"
    default_message = (
        "The user id header is empty, longer than 256 bytes or contains control characters."
    )


class BadRequest(ProxyError):
    status = 400
    code = "bad_request"
    default_message = "The request target is not a path on this proxy."


class Unauthenticated(ProxyError):
    status = 401
    code = "unauthenticated"
    default_message = "The proxy key header is missing or not valid."


class NotFound(ProxyError):
    status = 404
    code = "not_found"
    default_message = "Nothing is known here for this user."


class MethodNotAllowed(ProxyError):
    status = 405
    code = "method_not_allowed"
    default_message = "This endpoint does not accept that method."


class PayloadTooLarge(ProxyError):
    status = 413
    code = "payload_too_large"
    default_message = "The request body is larger than this proxy accepts."


class HeadersTooLarge(ProxyError):
    """The request line and headers together exceed `max_header_bytes`."""

    status = 431
    code = "headers_too_large"
    default_message = "The request headers are larger than this proxy accepts."


class UpstreamRejected(ProxyError):
    """Gini or the User Center refused our client credentials: a configuration problem."""

    status = 502
    code = "upstream_rejected"
    default_message = "Gini refused this proxy's client credentials; check the configuration."


class BadGateway(ProxyError):
    status = 502
    code = "bad_gateway"
    default_message = "Gini sent an answer the proxy could not understand."


class UpstreamUnavailable(ProxyError):
    status = 503
    code = "upstream_unavailable"
    default_message = "Gini cannot be reached right now; try again later."


class UpstreamThrottled(ProxyError):
    """Gini asked for a pause (429 with `Retry-After`): answered with the seconds left, without
    calling Gini. Raised with a `Retry-After` header (`transport/protection`)."""

    status = 429
    code = "upstream_throttled"
    default_message = "Gini asked for a pause in calls; retry after the time given."


class UpstreamThrottledUnavailable(UpstreamThrottled):
    """The same pause, asked for by a 503 with `Retry-After`: the caller sees Gini's status."""

    status = 503


class UpstreamBusy(ProxyError):
    """Every call slot to this upstream stayed taken for `queue_seconds`; raised with
    `Retry-After`."""

    status = 503
    code = "upstream_busy"
    default_message = "Too many calls to Gini are in flight; retry shortly."


class StoreUnavailable(ProxyError):
    """The credential store does not answer (flow 4 and erasure only; flows 1-3 never need it)."""

    status = 503
    code = "store_unavailable"
    default_message = "The credential store cannot be reached right now; try again later."


class Draining(ProxyError):
    status = 503
    code = "draining"
    default_message = "The proxy is shutting down; retry on another instance."
    closes_connection = True
    retry_after = "0"  # nothing was forwarded: another instance can take it at once


class UpstreamTimeout(ProxyError):
    status = 504
    code = "upstream_timeout"
    default_message = "Gini did not answer in time."


class InternalError(ProxyError):
    """Stands in for an unexpected exception at the boundary; the details go to the log only."""


class RequestTimeout(ProxyError):
    """The caller sent its request head or body too slowly (`client_timeouts`)."""

    status = 408
    code = "request_timeout"
    default_message = "The request did not arrive in time; the connection is closed."


class TooManyConnections(ProxyError):
    """The proxy listener holds `max_connections` open connections already."""

    status = 503
    code = "too_many_connections"
    default_message = "The proxy has too many open connections; retry shortly."
    closes_connection = True
    retry_after = "1"


def error_answer(error: ProxyError, request_id: str) -> tuple[dict[str, str], bytes]:
    """The headers and body of the contract's JSON error for `error` (status: `error.status`).

    Every 4xx the proxy answers itself ends the request before anything is forwarded, and the
    connection with it: a caller without a key, or sending junk, cannot keep connections
    (and `max_connections`) busy at the cost of one cheap refusal each.
    """
    body = json.dumps({"error": error.code, "message": error.message, "requestId": request_id})
    headers = {
        **error.headers,
        "Content-Type": "application/json; charset=utf-8",
        "X-Request-Id": request_id,
    }
    if error.retry_after is not None:
        headers["Retry-After"] = error.retry_after
    if error.closes_connection or error.status < 500:
        headers["Connection"] = "close"
    return headers, body.encode()


class Overloaded(ProxyError):
    """Bodies held in memory for rewriting reached `max_buffered_bytes`; raised with
    `Retry-After`."""

    status = 503
    code = "overloaded"
    default_message = "The proxy is holding too many answers in memory; retry shortly."


class StartupError(Exception):
    """A valid configuration that cannot run here: a port is taken, the store cannot be opened
    or holds another identity key, stored credentials cannot be decrypted (exit code 3)."""
