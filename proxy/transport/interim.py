"""Interim (1xx) answers from Gini: the two that are tolerated, and refusing every other one.

aiohttp's client silently skips each 1xx answer except 101 while it waits for the final one,
and hands a 101 back as if it were final. Relayed, a 101 tells the caller the connection now
speaks another protocol while the proxy goes on parsing HTTP on it; other 1xx codes (102, 1xx
nobody defined) are not something the Pay API or the User Center send. So only `100 Continue`
and `103 Early Hints` are let through (and skipped, never relayed: the proxy does not forward
interim answers); any other 1xx closes the connection and fails the call, which
`transport.failures.classify` maps to 502 `bad_gateway`.

The check sits in the client's protocol, where each parsed answer head passes once: aiohttp has
no public hook that sees the 1xx answers it skips (`transport.aiohttp_client` holds that part).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from proxy.transport.aiohttp_client import InterimCheckingConnector, InterimCheckingHandler

TOLERATED_INTERIM = frozenset({100, 103})


class InterimRefused(aiohttp.ClientError):
    """Gini sent a 1xx answer the proxy will not act on."""

    def __init__(self, status: int):
        super().__init__(f"upstream sent the interim status {status}")
        self.status = status


class GuardedResponseHandler(InterimCheckingHandler):
    """aiohttp's client protocol, failing the exchange on a refused 1xx answer head."""

    def refusal(self, status: int) -> BaseException | None:
        return None if status in TOLERATED_INTERIM else InterimRefused(status)


def guarded_connector(**kwargs: Any) -> aiohttp.TCPConnector:
    """A TCPConnector (same arguments) whose connections refuse 1xx answers but 100 and 103."""
    return InterimCheckingConnector(GuardedResponseHandler, **kwargs)
