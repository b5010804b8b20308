"""The trace collector of the tracing section: accepts OTLP/HTTP exports and discards them.

`POST /v1/traces` reads the body and answers 200 with an empty protobuf
`ExportTraceServiceResponse` (zero bytes), as a collector that took every span does.
`GET /_bench/exports` reports how many exports and bytes arrived, so the bench can show that
the sampled proxies really exported.
"""

from __future__ import annotations

from aiohttp import web

from .loop import serve_main

RECEIVED = web.AppKey("bench_received", list[int])  # [exports, bytes]


async def traces(request: web.Request) -> web.Response:
    body = await request.read()
    received = request.app[RECEIVED]
    received[0] += 1
    received[1] += len(body)
    return web.Response(body=b"", content_type="application/x-protobuf")


async def exports(request: web.Request) -> web.Response:
    count, size = request.app[RECEIVED]
    return web.json_response({"exports": count, "bytes": size})


def build_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)  # a batch of 512 spans fits
    app[RECEIVED] = [0, 0]
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/_bench/exports", exports)
    return app


def main() -> int:
    return serve_main("bench OTLP/HTTP sink (discards every span)", build_app)


if __name__ == "__main__":
    raise SystemExit(main())
