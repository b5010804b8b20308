"""Caller connections on the proxy listener: `max_connections` and the connection-level timeouts.

One `ConnectionGuard` per listener counts open connections and refuses those past the limit; a
`GuardedRequestHandler` per connection enforces `client_timeouts.header_seconds` (a request head
must be complete in time) and `send_seconds` (a caller may not leave answer bytes unread for
longer). `idle_seconds` is aiohttp's own keep-alive timeout between requests.
`body_seconds` is enforced where bodies are read (`body.read_paced`).

Cost on the hot path: no timer per request. The head timer is armed when a head starts and
only rescheduled when it fires early (like aiohttp's keep-alive timer); the send timer exists
only while the transport has told us to stop writing, which a reading caller never causes.

aiohttp has no public hooks for these, so the handler reads `_waiter` (set while the connection
waits for a request) and `_request_count` (heads parsed so far) and wraps `_process_keepalive`;
tests/test_client_timeouts.py pins all three through real sockets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from typing import Any, ClassVar, cast

from aiohttp.web_protocol import RequestHandler

from proxy.config import ClientTimeoutsConfig
from proxy.errors import ProxyError, RequestTimeout, TooManyConnections
from proxy.metrics import Metrics
from proxy.web.middleware import new_request_id

log = logging.getLogger("proxy.connections")

RECOVERED_SHARE = 0.9
"""An episode at `max_connections` ends once open connections drop to this share of it, so a
listener hovering at the limit logs one warning, not one per connection that comes and goes."""
DESCRIPTOR_HEADROOM = 128
"""Descriptors beyond two per caller connection: listeners, store, token calls, log files."""
MAX_LINGER_SECONDS = 10.0
"""aiohttp's default for reading away the rest of a body after an early answer."""


def raw_error(error: ProxyError) -> bytes:
    """The contract's JSON error as a complete HTTP/1.1 response that closes the connection,
    for the moments no request object exists (a head that never completed, a refused socket)."""
    request_id = new_request_id()
    body = json.dumps(
        {"error": error.code, "message": error.message, "requestId": request_id}
    ).encode()
    head = (
        f"HTTP/1.1 {error.status} {'Request Timeout' if error.status == 408 else 'Unavailable'}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-Id: {request_id}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def ensure_descriptors(max_connections: int) -> int:
    """Raise the soft descriptor limit so `max_connections` callers, each with a Gini
    connection, fit; warn when the hard limit does not allow it. Returns the soft limit."""
    needed = 2 * max_connections + DESCRIPTOR_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("raised the open file limit", extra={"from": soft, "to": target})
            soft = target
        except (ValueError, OSError):
            pass
    if soft < needed:
        log.warning(
            "the open file limit is too low for max_connections: lower max_connections or "
            "raise the limit (ulimit -n)",
            extra={"limit": soft, "needed": needed, "max_connections": max_connections},
        )
    return soft


class ConnectionGuard:
    """Counts the listener's open connections and holds the timeouts every connection uses."""

    def __init__(self, timeouts: ClientTimeoutsConfig, max_connections: int, metrics: Metrics):
        self.header_seconds = timeouts.header_seconds
        self.idle_seconds = timeouts.idle_seconds
        self.body_seconds = timeouts.body_seconds
        self.send_seconds = timeouts.send_seconds
        self.max_connections = max_connections
        self.metrics = metrics
        self.open = 0
        self.saturated = False  # inside an episode at the limit (logged once)
        self.refused_in_episode = 0
        metrics.open_connections.set_function(lambda: self.open)

    @property
    def lingering_seconds(self) -> float:
        """How long aiohttp may read away an unread body after answering: no longer than a
        caller may pause, so a stalled upload's connection closes soon after its 408."""
        return min(MAX_LINGER_SECONDS, self.body_seconds)

    def server_kwargs(self) -> dict[str, Any]:
        """The aiohttp server settings these bounds map onto."""
        return {"keepalive_timeout": self.idle_seconds, "lingering_time": self.lingering_seconds}

    def admit(self) -> bool:
        """Count a new connection in, or refuse it (False) when the limit is reached."""
        if self.open >= self.max_connections:
            self.metrics.connections_refused.inc()
            self.refused_in_episode += 1
            if not self.saturated:
                self.saturated = True
                log.warning(
                    "max_connections reached: refusing new connections",
                    extra={"max_connections": self.max_connections},
                )
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1
        if self.saturated and self.open <= self.max_connections * RECOVERED_SHARE:
            self.saturated = False
            log.info(
                "open connections below max_connections again",
                extra={"open": self.open, "refused": self.refused_in_episode},
            )
            self.refused_in_episode = 0

    def timed_out(self, reason: str) -> None:
        self.metrics.client_timeout(reason)
        log.info("closed a slow caller connection", extra={"reason": reason})


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol with `max_connections` and the head and send timeouts."""

    __slots__ = (
        "_head_count",
        "_head_deadline",
        "_head_handle",
        "_paused_at",
        "_refused",
        "_send_handle",
        "_socket",
    )
    guard: ClassVar[ConnectionGuard]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._socket = transport  # aiohttp drops its reference on close; aborting needs it
        self._head_handle: asyncio.TimerHandle | None = None
        self._send_handle: asyncio.TimerHandle | None = None
        self._paused_at = 0.0
        self._refused = not self.guard.admit()
        if self._refused:
            # Answered and closed at once: the descriptor is free again within this callback.
            self._force_close = True  # aiohttp's data_received then ignores anything sent
            transport.write(raw_error(TooManyConnections()))
            transport.close()
            return
        super().connection_made(transport)
        # The first head is timed from accept, by header_seconds alone: a connection that sends
        # nothing is cut too, with a 408. aiohttp's keep-alive timer, armed at accept as well,
        # takes over between requests (it is armed again after each answer).
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        self._head_count = self._request_count
        self._arm_head()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._refused = True  # count the release once, whatever aiohttp does next
        self.guard.release()
        for handle in (self._head_handle, self._send_handle):
            if handle is not None:
                handle.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # `_waiter` is set while the connection waits for its next request: these are the first
        # bytes of a new head unless the head count still equals the one of the last arming.
        if self._waiter is not None and self._head_count != self._request_count:
            self._head_count = self._request_count
            self._arm_head()
        RequestHandler.data_received(self, data)

    def _arm_head(self) -> None:
        loop = self._loop
        self._head_deadline = loop.time() + self.guard.header_seconds
        if self._head_handle is None:
            self._head_handle = loop.call_at(self._head_deadline, self._head_check)

    def _head_check(self) -> None:
        self._head_handle = None
        waiter = self._waiter
        if self._request_count != self._head_count or waiter is None or waiter.done():
            return  # the head completed; a later one arms the timer again
        loop = self._loop
        if loop.time() < self._head_deadline:  # a newer head started after this was armed
            self._head_handle = loop.call_at(self._head_deadline, self._head_check)
            return
        self.guard.timed_out("header")
        if self.transport is not None:
            self.transport.write(raw_error(RequestTimeout()))
        self.force_close()

    def _process_keepalive(self) -> None:
        closing = self._force_close
        super()._process_keepalive()
        if self._force_close and not closing:
            self.guard.timed_out("idle")

    def pause_writing(self) -> None:
        super().pause_writing()
        self._paused_at = self._loop.time()
        if self._send_handle is None:
            self._send_handle = self._loop.call_at(
                self._paused_at + self.guard.send_seconds, self._send_check
            )

    def _send_check(self) -> None:
        self._send_handle = None
        if not self.writing_paused or self._refused:
            return  # the caller read; the next pause arms the timer again
        deadline = self._paused_at + self.guard.send_seconds
        if self._loop.time() < deadline:  # resumed and paused again since this was armed
            self._send_handle = self._loop.call_at(deadline, self._send_check)
            return
        self.guard.timed_out("send")
        # Abort, not close: close would wait for the unread bytes to drain, which never happens.
        # connection_lost then cancels the handler, and with it the upstream request.
        self._socket.abort()
