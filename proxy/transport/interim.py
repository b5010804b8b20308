"""Interim (1xx) answers from Gini: the two that are tolerated, and refusing every other one.

aiohttp's client silently skips each 1xx answer except 101 while it waits for the final one,
and hands a 101 back as if it were final. Relayed, a 101 tells the caller the connection now
speaks another protocol while the proxy goes on parsing HTTP on it; other 1xx codes (102, 1xx
nobody defined) are not something the Pay API or the User Center send. So only `100 Continue`
and `103 Early Hints` are let through (and skipped, never relayed: the proxy does not forward
interim answers); any other 1xx closes the connection and fails the call, which
`transport.failures.classify` maps to 502 `bad_gateway`.

The check sits in the client's protocol, where each parsed answer head passes once: aiohttp has
no public hook that sees the 1xx answers it skips.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.http import RawResponseMessage
from aiohttp.streams import StreamReader

TOLERATED_INTERIM = frozenset({100, 103})


class InterimRefused(aiohttp.ClientError):
    """Gini sent a 1xx answer the proxy will not act on."""

    def __init__(self, status: int):
        super().__init__(f"upstream sent the interim status {status}")
        self.status = status


class GuardedResponseHandler(ResponseHandler):
    """aiohttp's client protocol, failing the exchange on a refused 1xx answer head."""

    def feed_data(self, data: tuple[RawResponseMessage, StreamReader], size: int = 0) -> None:
        if self._exception is not None:
            return  # refused already: nothing after it on this connection may be read as an answer
        status = data[0].code
        if status < 200 and status not in TOLERATED_INTERIM:
            # Closed at once, as aiohttp does on a parser error: an unsolicited 1xx on an idle
            # pooled connection must not be handed to the next request that takes it.
            if self.transport is not None:
                self.transport.close()
            self.set_exception(InterimRefused(status))
            return
        super().feed_data(data, size)


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector whose connections use `GuardedResponseHandler`."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        # partial[...] is invariant to mypy, although a subclass instance is what is made here.
        self._factory = cast(
            "functools.partial[ResponseHandler]",
            functools.partial(GuardedResponseHandler, loop=self._loop),
        )
