"""Every use of a private part of aiohttp's client, fenced into this one module.

aiohttp gives no public way to do these, and each is pinned by
`tests/test_aiohttp_client_internals.py`, whose failures name the internal that moved: that is
the audit an aiohttp upgrade needs (the version bound in `pyproject.toml` covers the releases it
passed on).

- `aiohttp.client_proto.ResponseHandler`, the client's protocol: subclassed to see each parsed
  interim (1xx) answer head, which the client otherwise skips without a trace
  (`feed_data(data, size)`, `_exception`, `set_exception`).
- `TCPConnector._factory` and `TCPConnector._loop`: how a connector makes that protocol.
- `ClientConnectorError._conn_key.is_ssl`: whether a failed connection was to an https origin
  (the public `ssl` property gives the `ssl=` argument, which is a context for http too).
- `ClientSession._retry_connection`: aiohttp resends a GET, PUT or DELETE once when its
  connection drops; `no_silent_resend` turns that off.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import RawResponseMessage
from aiohttp.streams import StreamReader


class InterimCheckingHandler(ResponseHandler):
    """aiohttp's client protocol, asking `refusal` about each interim (1xx) answer head before
    the client sees it; an exception it returns fails the exchange and closes the connection.
    Final answers pass unasked (the hot path pays one comparison)."""

    def refusal(self, status: int) -> BaseException | None:
        """The exception to fail the exchange with for this 1xx status, or None to go on."""
        return None

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        if self._exception is not None:
            return  # refused already: nothing after it on this connection may be read as an answer
        status = data[0].code
        refusal = self.refusal(status) if status < 200 else None
        if refusal is not None:
            # Closed at once, as aiohttp does on a parser error: an unsolicited answer on an idle
            # pooled connection must not be handed to the next request that takes it.
            if self.transport is not None:
                self.transport.close()
            self.set_exception(refusal)
            return
        super().feed_data(data, size)


class InterimCheckingConnector(aiohttp.TCPConnector):
    """A TCPConnector whose connections use `protocol` (an `InterimCheckingHandler` subclass)."""

    def __init__(self, protocol: type[InterimCheckingHandler], **kwargs: Any):
        super().__init__(**kwargs)
        # partial[...] is invariant to mypy, although a subclass instance is what is made here.
        self._factory = cast(
            "functools.partial[ResponseHandler]", functools.partial(protocol, loop=self._loop)
        )


def connecting_over_tls(exc: aiohttp.ClientConnectorError) -> bool:
    """Whether the connection that failed was to an https origin (TLS over TCP)."""
    key = getattr(exc, "_conn_key", None)
    return bool(getattr(key, "is_ssl", False))


def no_silent_resend(session: aiohttp.ClientSession) -> None:
    """Stop `session` from resending a request whose connection dropped: that would repeat PUTs
    behind the caller's back and outside the retry budget (flow 1 resends bodiless
    GET/HEAD/OPTIONS itself, within it)."""
    if not hasattr(session, "_retry_connection"):
        raise RuntimeError("aiohttp internal ClientSession._retry_connection is gone")
    session._retry_connection = False
