"""The baseline: the least an aiohttp forwarder with Gini credentials can do.

One ClientSession, one catch-all route; the caller's headers minus hop-by-hop ones are copied,
`Authorization: Basic ...` and `X-User-Identifier: <hmac>` are injected, the upstream body is read
whole and returned in a `web.Response`. No metrics, logs, validation or error mapping. It runs on
the same event loop as the proxy (uvloop when installed).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import ssl
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .loop import baseline_arguments, run_on_fast_loop, serve_app

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
RESPONSE_DROP = HOP_BY_HOP | {"content-encoding", "date", "server"}
SESSION = web.AppKey("bare_session", aiohttp.ClientSession)


def build_app(
    upstream: str, client_id: str, secret: str, hmac_key: bytes, ca_file: str | None = None
) -> web.Application:
    basic = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode("ascii")
    base = upstream.rstrip("/")

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        context = ssl.create_default_context(cafile=ca_file) if ca_file else True
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=context), auto_decompress=False
        )
        yield
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.Response:
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        user = request.headers.get("X-User-Id", "")
        headers["Authorization"] = basic
        headers["X-User-Identifier"] = hmac.new(hmac_key, user.encode(), hashlib.sha256).hexdigest()
        data = await request.read() if request.body_exists else None
        async with request.app[SESSION].request(
            request.method,
            base + request.raw_path,
            headers=headers,
            data=data,
            allow_redirects=False,
        ) as answer:
            body = await answer.read()
            out = CIMultiDict(
                (k, v) for k, v in answer.headers.items() if k.lower() not in RESPONSE_DROP
            )
            return web.Response(status=answer.status, headers=out, body=body)

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(args: argparse.Namespace) -> int:
    app = build_app(
        args.upstream, args.client_id, args.client_secret, args.hmac_key.encode(), args.ca_file
    )
    return await serve_app(app, args.host, args.port)


def main() -> int:
    parser = baseline_arguments("bare aiohttp forwarder (bench baseline)")
    return run_on_fast_loop(serve(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
