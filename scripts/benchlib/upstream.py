"""The local upstream: a minimal aiohttp app standing in for the Pay API.

`GET /documents` answers a fixed JSON body of about 300 bytes with no absolute URL in it (so the
proxy's URL rewriting finds nothing to change), `POST /upload` reads the request body as a stream
and reports its size, `GET /download?bytes=N` streams N bytes.

`POST /login` stands in for Gini's derived-user login: it wants the client's Basic credentials
and an `X-User-Identifier`, waits `--login-delay` seconds (Gini's round trip; it makes
concurrent first requests for one user really overlap with the fetch) and answers a token
valid for 3599 s. The token names the identifier it was issued for and a call number, so the
bench can tell whose token a caller got and whether it was fetched once. `GET /_bench/logins`
reports how many logins were answered, for how many distinct identifiers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter

from aiohttp import web

from .loop import run_on_fast_loop, serve_app

DOCUMENTS = json.dumps(
    {
        "totalCount": 2,
        "documents": [
            {
                "id": "626626a0-749f-11e2-bfd6-000000000000",
                "name": "invoice-2024-0001.pdf",
                "creationDate": 1360623867402,
                "progress": "COMPLETED",
                "origin": "UPLOAD",
                "sourceClassification": "NATIVE",
                "pageCount": 1,
            },
            {
                "id": "7b5a7f79-ae7c-4040-b6cf-25cde58ad937",
                "name": "receipt-0815.jpg",
                "creationDate": 1360623867555,
                "progress": "PENDING",
                "origin": "UPLOAD",
                "sourceClassification": "SCANNED",
                "pageCount": 1,
            },
        ],
    },
    separators=(",", ":"),
).encode()
CHUNK = 64 * 1024
_BLOCK = b"\xa5" * CHUNK
TOKEN_LIFETIME = 3599  # seconds, what Gini's /login answers
LOGIN_DELAY = 0.05  # seconds before /login answers (default of --login-delay)
LOGINS = web.AppKey("bench_logins", Counter[str])
DELAY = web.AppKey("bench_login_delay", float)


async def documents(request: web.Request) -> web.Response:
    return web.Response(body=DOCUMENTS, content_type="application/json")


async def upload(request: web.Request) -> web.Response:
    received = 0
    async for chunk in request.content.iter_any():
        received += len(chunk)
    return web.json_response({"received": received})


async def download(request: web.Request) -> web.StreamResponse:
    try:
        size = int(request.query.get("bytes", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="bytes must be an integer") from None
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    view = memoryview(_BLOCK)
    left = size
    while left > 0:
        step = min(left, CHUNK)
        await response.write(view[:step])
        left -= step
    await response.write_eof()
    return response


async def login(request: web.Request) -> web.Response:
    identifier = request.headers.get("X-User-Identifier", "")
    if not request.headers.get("Authorization", "").startswith("Basic "):
        return web.json_response({"error": "unauthorized"}, status=401)
    if not identifier:
        return web.json_response({"error": "no X-User-Identifier"}, status=400)
    counts = request.app[LOGINS]
    counts[identifier] += 1
    number = counts.total()
    if request.app[DELAY] > 0:
        await asyncio.sleep(request.app[DELAY])
    body = {
        "access_token": f"bench-token.{identifier}.{number}",
        "token_type": "bearer",
        "expires_in": TOKEN_LIFETIME,
    }
    return web.json_response(body)


async def logins(request: web.Request) -> web.Response:
    counts = request.app[LOGINS]
    return web.json_response({"calls": counts.total(), "users": len(counts)})


def build_app(login_delay: float = LOGIN_DELAY) -> web.Application:
    app = web.Application()
    app[LOGINS] = Counter()
    app[DELAY] = login_delay
    app.router.add_get("/documents", documents)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    app.router.add_post("/login", login)
    app.router.add_get("/_bench/logins", logins)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(description="bench upstream (Pay API stand-in)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--login-delay", type=float, default=LOGIN_DELAY, help="seconds before /login answers"
    )
    args = parser.parse_args()
    return run_on_fast_loop(serve_app(build_app(args.login_delay), args.host, args.port))


if __name__ == "__main__":
    raise SystemExit(main())
