"""The `Server` header of both listeners: the product name, never a version.

aiohttp puts `Server: Python/3.x aiohttp/3.y` on every response that carries no `Server` of its
own, its plain-text error pages included, which tells a scanner exactly which known flaws to
try. aiohttp reads that default from a module attribute each time a response is prepared, so
replacing the attribute once costs nothing per request and covers every response either
listener writes: answers, JSON errors, router 404s and parser errors alike. Gini's own `Server`
is never relayed (`rewrite.NEVER_RETURN`). A test pins the header on each kind of response, so
an aiohttp release that moves the attribute fails the suite instead of leaking versions.
"""

from __future__ import annotations

from aiohttp import web_response

SERVER = "gini-auth-proxy"


def install() -> None:
    """Make `SERVER` the default `Server` header of every aiohttp response in this process."""
    web_response.SERVER_SOFTWARE = SERVER  # type: ignore[attr-defined]  # imported, not exported
