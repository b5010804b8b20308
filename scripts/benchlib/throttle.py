"""The throttling upstream of the shed section: a Pay API stand-in that starts to answer 429.

`GET /documents` answers the bench's usual body until `POST /_bench/throttle`; from then on
every call gets `429 Too Many Requests` with `Retry-After: 600`, so a proxy in front of it
pauses its Pay API calls after the first one and, whenever a pause runs out, the one call it
lets through starts the next. `POST /_bench/throttle?status=503` answers `503` without
`Retry-After` instead: a failing Gini, which opens a proxy's breaker. `GET /_bench/calls`
reports how many calls reached it, so the bench can show that the load was shed by the proxy
and not answered here.
"""

from __future__ import annotations

from aiohttp import web

from .loop import serve_main
from .upstream import DOCUMENTS

RETRY_AFTER = 600  # seconds: the shed proxy's max_pause_seconds, longer than any run
THROTTLED = web.AppKey("bench_throttled", list[int])  # a cell: [0, 429 or 503]
CALLS = web.AppKey("bench_calls", list[int])  # a cell: [calls to /documents]


async def documents(request: web.Request) -> web.Response:
    request.app[CALLS][0] += 1
    status = request.app[THROTTLED][0]
    if status == 429:
        return web.json_response(
            {"error": "too many requests"}, status=429, headers={"Retry-After": str(RETRY_AFTER)}
        )
    if status:
        return web.json_response({"error": "unavailable"}, status=status)
    return web.Response(body=DOCUMENTS, content_type="application/json")


async def throttle(request: web.Request) -> web.Response:
    status = 503 if request.query.get("status") == "503" else 429
    request.app[THROTTLED][0] = status
    return web.json_response({"throttled": status})


async def calls(request: web.Request) -> web.Response:
    return web.json_response({"calls": request.app[CALLS][0]})


def build_app() -> web.Application:
    app = web.Application()
    app[THROTTLED] = [0]
    app[CALLS] = [0]
    app.router.add_get("/documents", documents)
    app.router.add_post("/_bench/throttle", throttle)
    app.router.add_get("/_bench/calls", calls)
    return app


def main() -> int:
    return serve_main("bench upstream that throttles on request", build_app)


if __name__ == "__main__":
    raise SystemExit(main())
