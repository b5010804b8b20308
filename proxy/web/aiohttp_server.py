"""Every private aiohttp server internal the proxy relies on, and nothing else.

aiohttp has no public hooks for what the listeners need, so this module, and only this one,
reaches below its public API (the outbound side has its own fence in `transport/`):

- `web_response.SERVER_SOFTWARE`: the default `Server` header, read each time a response is
  prepared. Replaced once with the product name (no version for scanners to match).
- `AppRunner._make_server`: the server object a runner builds; ours gets a connection class
  with the guards below and a `request_handler` wrapped by the proxy's pre-routing checks.
- `RequestHandler._waiter` (set while a connection waits for its next request),
  `_request_count` (heads parsed so far), `_keepalive_handle` (the keep-alive timer armed at
  accept), `_force_close` (set once the connection is closing; `data_received` then ignores
  input) and `_process_keepalive` (the keep-alive timer's callback, wrapped to count idle cuts).

`tests/test_aiohttp_server.py` checks each of them by name, so an aiohttp release that changes
one fails with a message naming it; `pyproject.toml` bounds aiohttp to the releases checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, cast

from aiohttp import web, web_response
from aiohttp.web_protocol import RequestHandler

from proxy.errors import (
    BadRequest,
    HeadersTooLarge,
    InternalError,
    RequestTimeout,
    TooManyConnections,
)
from proxy.web.connections import ConnectionGuard, raw_error
from proxy.web.middleware import error_response, new_request_id

SERVER = "gini-auth-proxy"

RequestFunction = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
Wrapper = Callable[[RequestFunction], RequestFunction]


def install_server_header() -> None:
    """Make `SERVER` the default `Server` header of every aiohttp response in this process:
    answers, JSON errors, router 404s and parser errors alike (Gini's is never relayed)."""
    web_response.SERVER_SOFTWARE = SERVER  # type: ignore[attr-defined]  # imported, not exported


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol with the listener's connection limit, the head and send
    timeouts, a bound on the bytes of a request head, and JSON parser errors.

    Cost on the hot path: no timer per request. The head timer is armed when a head starts and
    only rescheduled when it fires early (like aiohttp's keep-alive timer); the send timer
    exists only while the transport has told us to stop writing, which a reading caller never
    causes.
    """

    __slots__ = (
        "_head_bytes",
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
        self._head_bytes = 0
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
        waiter = self._waiter
        if waiter is None or waiter.done():
            # A request is being handled (or about to be): body bytes, or pipelined heads,
            # whose size the request wrapper checks once they are parsed.
            RequestHandler.data_received(self, data)
            return
        # Waiting for a request: these bytes belong to a head. They start a new one unless the
        # head count still equals the one of the last arming.
        count = self._request_count
        if self._head_count != count:
            self._head_count = count
            self._head_bytes = 0
            self._arm_head()
        self._head_bytes += len(data)
        RequestHandler.data_received(self, data)
        # A head still incomplete past the bound is refused now, before aiohttp's parser holds
        # more of it: a slow caller cannot park up to max_headers x max_field_size bytes.
        if self._request_count == count and self._head_bytes > self.guard.max_header_bytes:
            error = HeadersTooLarge()
            self.guard.refused_request(error, "head over max_header_bytes")
            if self.transport is not None:
                self.transport.write(raw_error(error))
            self.force_close()

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

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp's parser refused (bad header bytes, a broken request line): the
        contract's JSON error instead of aiohttp's text page."""
        if request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)  # closes the connection
        error = BadRequest("The request is not valid HTTP.") if status < 500 else InternalError()
        self.guard.refused_request(error, type(exc).__name__)
        response = error_response(error, new_request_id())
        response.force_close()
        return response


class ListenerRunner(web.AppRunner):
    """An AppRunner whose connections are `GuardedRequestHandler`s bound to `guard`, and whose
    requests pass through `wrap` (if given) before aiohttp's router sees them."""

    def __init__(
        self,
        app: web.Application,
        guard: ConnectionGuard,
        wrap: Wrapper | None = None,
        **kwargs: Any,
    ):
        super().__init__(app, **guard.server_kwargs(), **kwargs)
        self.guard = guard
        self._wrap = wrap
        handler_class: type[GuardedRequestHandler] = type(
            "ListenerRequestHandler", (GuardedRequestHandler,), {"guard": guard}
        )

        class ListenerServer(web.Server):
            def __call__(self) -> RequestHandler:
                return handler_class(self, loop=self._loop, **self._kwargs)

        self._server_class = ListenerServer

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = self._server_class
        if self._wrap is not None:
            # Each connection reads `request_handler` when it is made: wrapped once, here.
            server.request_handler = self._wrap(server.request_handler)
        return server
