"""Sandbox-only Pay API routes under /_sandbox/ (NOT part of Gini): test instruments.

They need no authentication and are exempt from injected delays and failures.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from proxy.sandbox.common import (
    PLAIN_JSON,
    SimError,
    config_of,
    json_bytes,
    json_response,
    query_float,
    query_int,
    state_of,
)
from proxy.sandbox.payloads import download_chunks, links_json, placeholder_png
from proxy.sandbox.uploads import digest_stream

ECHO_JSON_LIMIT = 1024 * 1024  # bodies up to this size are parsed into body_json
MAX_DELAY = 3600.0
MAX_GENERATED_JSON = 256 * 1024 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


async def echo(request: web.Request) -> web.Response:
    """ANY /_sandbox/echo[/...]: describe the request as received.

    Query: status=N answer N; delay=S wait S seconds first; location=URL, content_type=T and
    (repeatable) header=Name:Value shape the answer.
    """
    status = query_int(request, "status", 200, low=200, high=599)
    delay = query_float(request, "delay", high=MAX_DELAY)
    keep = ECHO_JSON_LIMIT if _is_json(request.content_type) else 0
    digest = await digest_stream(request.content, keep_up_to=keep)
    if delay:
        await asyncio.sleep(delay)  # a vanished client cancels this; the middleware counts it
    body_json: Any = None
    if digest.kept:
        try:
            body_json = json.loads(digest.kept)
        except ValueError:
            body_json = None
    description = {
        "method": request.method,
        "path": request.path,
        "raw_path": request.raw_path,
        "query": dict(request.query),  # first value per name
        "query_items": [[k, v] for k, v in request.query.items()],  # all, in order
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_bytes": digest.size,
        "body_sha256": digest.sha256,
        "body_json": body_json,
    }
    headers: CIMultiDict[str] = CIMultiDict()
    headers["Content-Type"] = request.query.get("content_type", PLAIN_JSON)
    if "location" in request.query:
        headers["Location"] = request.query["location"]
    for spec in request.query.getall("header", []):
        name, colon, value = spec.partition(":")
        if not colon or not name.strip():
            raise SimError(400, "header must be Name:Value")
        headers.add(name.strip(), value.strip())
    body = b"" if status in _NO_BODY_STATUSES else json_bytes(description)
    return web.Response(status=status, body=body, headers=headers)


async def download(request: web.Request) -> web.StreamResponse:
    """GET /_sandbox/download?bytes=N[&chunked=1][&delay_between_chunks=S]: N pattern bytes,
    streamed block by block (see ``expected_download_sha256``)."""
    size = query_int(request, "bytes", -1, low=0, high=2**40)
    if size < 0:
        raise SimError(400, "query parameter 'bytes' is required")
    pause = query_float(request, "delay_between_chunks", high=MAX_DELAY)
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    if request.query.get("chunked") in ("1", "true"):
        response.enable_chunked_encoding()
    else:
        response.content_length = size
    await response.prepare(request)
    for chunk in download_chunks(size):
        await response.write(chunk)
        if pause:
            await asyncio.sleep(pause)
    await response.write_eof()
    return response


async def big_json(request: web.Request) -> web.Response:
    """GET /_sandbox/json?size=N: about N bytes of application/json full of Pay API links."""
    size = query_int(request, "size", 1024, low=0, high=MAX_GENERATED_JSON)
    body = links_json(config_of(request).pay_api_url, size)
    return web.Response(body=body, headers={"Content-Type": PLAIN_JSON})


async def malformed(request: web.Request) -> web.Response:
    """GET /_sandbox/malformed: an invalid status line, then the connection closes."""
    transport = request.transport
    if transport is not None:
        transport.write(b"HTTP/1.1 abc garbage\r\n\r\n")
        transport.close()
    return web.Response()  # never sent: the transport is gone


async def reset(request: web.Request) -> web.Response:
    """GET /_sandbox/reset: drop the connection without answering."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response()  # never sent: the transport is gone


async def icon(request: web.Request) -> web.Response:
    """GET /_sandbox/icons/{name}: the payment providers' icons (a placeholder PNG)."""
    return web.Response(body=placeholder_png(), content_type="image/png")


async def counters(request: web.Request) -> web.Response:
    """GET /_sandbox/state: the counters, for humans poking at a running simulator."""
    state = state_of(request)
    fields = (
        "logins",
        "client_tokens_issued",
        "user_logins",
        "users_created",
        "payment_provider_calls",
        "cancelled_requests",
    )
    data: dict[str, Any] = {name: getattr(state, name) for name in fields}
    data["users"] = len(state.users)
    data["documents"] = len(state.documents)
    return json_response(data, content_type=PLAIN_JSON)


def add_sandbox_routes(app: web.Application) -> None:
    """Register the /_sandbox/ routes on the Pay API app."""
    app.router.add_route("*", "/_sandbox/echo", echo)
    app.router.add_route("*", "/_sandbox/echo/{tail:.*}", echo)
    app.router.add_get("/_sandbox/download", download)
    app.router.add_get("/_sandbox/json", big_json)
    app.router.add_get("/_sandbox/malformed", malformed)
    app.router.add_get("/_sandbox/reset", reset)
    app.router.add_get("/_sandbox/icons/{name}", icon)
    app.router.add_get("/_sandbox/state", counters)
