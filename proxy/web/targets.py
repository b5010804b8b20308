"""What the proxy listener refuses before its router: oversized heads and targets no route
can match.

aiohttp's router answers a target it cannot match (CONNECT's `host:port`, `OPTIONS *`, a path
holding a decoded line break such as `%0a`) with a plain-text 404, outside every handler: no
contract error, no request id, no metric, no access-log line, and the connection goes on
parsing, so a request pipelined behind it was served. Here each gets the contract's error
through the same observer as every other answer (auth, request id, metrics, access log), and
4xx answers close the connection (`errors.error_answer`), dropping anything pipelined.

The head bound is checked here, once the head is parsed, as well as while it arrives
(`web/aiohttp_server`): heads pipelined behind a request are only measurable here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from aiohttp import web

from proxy.errors import BadRequest, HeadersTooLarge, MethodNotAllowed, ProxyError
from proxy.web.aiohttp_server import RequestFunction, Wrapper
from proxy.web.middleware import Handler

HEAD_OVERHEAD = 16
"""Request-line bytes besides method and target (spaces, `HTTP/1.1`, CRLF)."""


def head_bytes(request: web.BaseRequest) -> int:
    """The size of the request line and headers as sent (each header line with `: ` and CRLF)."""
    size = len(request.method) + len(request.raw_path) + HEAD_OVERHEAD
    for name, value in request.raw_headers:
        size += len(name) + len(value) + 4
    return size


def target_error(request: web.BaseRequest) -> ProxyError:
    """The refusal for a target no route matches."""
    if request.method == "CONNECT" or request.raw_path == "*":
        return MethodNotAllowed(
            "This proxy does not open tunnels or answer for the server as a whole."
        )
    return BadRequest()


async def _refuse_target(request: web.Request) -> web.StreamResponse:
    raise target_error(request)


async def _refuse_head(request: web.Request) -> web.StreamResponse:
    raise HeadersTooLarge


def routed_to_forward(request: web.BaseRequest) -> bool:
    """Would the router give `request` to flow 1's catch-all route, `/{tail:.*}`, and its
    handler be all that runs? The router matches `path_safe`: `.*` takes no line break, and
    every path under `/_proxy/` has routes of its own. An `Expect` header makes the router run
    the route's expect handler first, so such a request takes the router's way."""
    path = request.rel_url.path_safe
    return (
        path[:1] == "/"
        and not path.startswith("/_proxy/")
        and "\n" not in path
        and not request.headers.get("Expect")
    )


def pre_routing(
    observe: Callable[[Handler], Handler], max_header_bytes: int, forward: Handler
) -> Wrapper:
    """`wrap(app_handler)`: the app's request handler behind the head bound and with unroutable
    targets answered as contract errors. `observe` wraps handlers as the listener's routes are.

    `forward`, flow 1's observed handler, is called directly for the requests the router would
    give it (`routed_to_forward`): aiohttp's router and its `Application._handle` (resolve,
    match info, the middleware check) cost 22k instructions of a flow-1 request's 628k (3.5 %,
    callgrind), and flow 1 uses nothing they set up. The other requests take the router."""
    refuse_target = observe(_refuse_target)
    refuse_head = observe(_refuse_head)

    def wrap(app_handler: RequestFunction) -> RequestFunction:
        async def checked(request: web.BaseRequest) -> web.StreamResponse:
            if head_bytes(request) > max_header_bytes:
                return await refuse_head(cast(web.Request, request))  # the app's factory
            if routed_to_forward(request):
                return await forward(cast(web.Request, request))
            try:
                return await app_handler(request)
            except web.HTTPException:
                # Every route's handler is observed, and the observer answers every
                # HTTPException itself: one reaching here is the router's own "no match".
                return await refuse_target(cast(web.Request, request))

        return checked

    return wrap
