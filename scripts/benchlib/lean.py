"""The lean baseline: a correct aiohttp forwarder with the per-request work cut to what is left.

Same contract as `bare.py` (the caller's headers minus hop-by-hop ones, `Authorization: Basic
...` and `X-User-Identifier: <HMAC-SHA256 hex of X-User-Id>` injected; the answer's status,
headers minus hop-by-hop ones, and body relayed), but what does not depend on the request is
done once:

- the HMAC of a user id is memoised (the bench uses a handful of ids);
- whether a header name is hop-by-hop is memoised per spelling: no `str.lower()` per header;
- the base URL is one prebuilt string, and the upstream URL is built with `encoded=True` (the
  caller's raw path is already encoded, so yarl need not re-quote it);
- answers with a Content-Length up to `--body-limit` are read whole and returned in a
  `web.Response`; larger or unsized answers are streamed through a `StreamResponse`, and so are
  large request bodies, so big transfers do not sit in memory.

Unlike `bare.py` it keeps no cookies (one jar shared by all users would mix them), adds no
`User-Agent`/`Accept*` headers of the client library's own (a forwarder sends what the caller
sent), and keeps the answer's Content-Encoding (the body is relayed undecoded).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import ssl
from collections.abc import AsyncIterator, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from .bare import HOP_BY_HOP
from .loop import baseline_arguments, run_on_fast_loop, serve_app

BODY_LIMIT = 1 << 20  # bytes: answers (and request bodies) up to this size are read whole
CHUNK = 64 * 1024
MEMO_LIMIT = 4096  # entries per memo, cleared when full: a bound, never reached by the bench
# Headers the client library must not add on its own (it still adds Host and Content-Length).
SKIP_AUTO = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
SESSION = web.AppKey("lean_session", aiohttp.ClientSession)


class Forwarder:
    """The one handler, with its precomputed credentials and memos."""

    def __init__(self, upstream: str, client_id: str, secret: str, hmac_key: bytes) -> None:
        token = base64.b64encode(f"{client_id}:{secret}".encode()).decode("ascii")
        self.inject = (("Authorization", "Basic " + token),)
        self.base = upstream.rstrip("/")
        self.hmac_key = hmac_key
        self.identifiers: dict[str, str] = {}  # X-User-Id -> X-User-Identifier
        self.forwarded: dict[str, bool] = {}  # header name as spelled -> not hop-by-hop
        self.body_limit = BODY_LIMIT

    def identifier(self, user: str) -> str:
        found = self.identifiers.get(user)
        if found is None:
            if len(self.identifiers) >= MEMO_LIMIT:
                self.identifiers.clear()
            found = hmac.new(self.hmac_key, user.encode(), hashlib.sha256).hexdigest()
            self.identifiers[user] = found
        return found

    def copy_headers(self, source: Mapping[str, str]) -> CIMultiDict[str]:
        """`source` without its hop-by-hop headers."""
        out: CIMultiDict[str] = CIMultiDict()
        memo = self.forwarded
        for name, value in source.items():
            keep = memo.get(name)
            if keep is None:
                if len(memo) >= MEMO_LIMIT:
                    memo.clear()
                keep = memo[name] = name.lower() not in HOP_BY_HOP
            if keep:
                out.add(name, value)
        return out

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        headers = self.copy_headers(request.headers)
        for name, value in self.inject:
            headers[name] = value  # replaces whatever the caller sent under that name
        headers["X-User-Identifier"] = self.identifier(request.headers.get("X-User-Id", ""))
        data: bytes | aiohttp.StreamReader | None = None
        if request.body_exists:
            size = request.content_length
            small = size is not None and size <= self.body_limit
            if small:
                data = await request.read()
            else:
                data = request.content
                if size is not None:  # else aiohttp sends it chunked
                    headers["Content-Length"] = str(size)
        url = URL(self.base + request.raw_path, encoded=True)
        session = request.app[SESSION]
        async with session.request(
            request.method, url, headers=headers, data=data, allow_redirects=False
        ) as answer:
            out = self.copy_headers(answer.headers)
            size = answer.content_length
            # HEAD takes the streaming path: web.Response would say Content-Length: 0.
            if size is not None and size <= self.body_limit and request.method != "HEAD":
                body = await answer.read()
                return web.Response(
                    status=answer.status, reason=answer.reason, headers=out, body=body
                )
            response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=out)
            if size is not None:
                response.content_length = size
            await response.prepare(request)
            async for chunk in answer.content.iter_chunked(CHUNK):
                await response.write(chunk)
            await response.write_eof()
            return response


def build_app(
    upstream: str,
    client_id: str,
    secret: str,
    hmac_key: bytes,
    ca_file: str | None = None,
    body_limit: int = BODY_LIMIT,
) -> web.Application:
    forwarder = Forwarder(upstream, client_id, secret, hmac_key)
    forwarder.body_limit = body_limit

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        context = ssl.create_default_context(cafile=ca_file) if ca_file else True
        app[SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=context),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=SKIP_AUTO,
        )
        yield
        await app[SESSION].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forwarder)
    return app


async def serve(args: argparse.Namespace) -> int:
    app = build_app(
        args.upstream,
        args.client_id,
        args.client_secret,
        args.hmac_key.encode(),
        args.ca_file,
        args.body_limit,
    )
    return await serve_app(app, args.host, args.port)


def main() -> int:
    parser = baseline_arguments("lean aiohttp forwarder (bench baseline)")
    parser.add_argument(
        "--body-limit",
        type=int,
        default=BODY_LIMIT,
        help="largest body (bytes, by Content-Length) read whole; larger ones are streamed",
    )
    return run_on_fast_loop(serve(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
