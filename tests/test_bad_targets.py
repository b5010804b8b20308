"""What the proxy listener refuses before anything is forwarded, tried from outside on raw
sockets: targets no route matches (CONNECT, `OPTIONS *`, decoded line breaks), heads over
`max_header_bytes`, callers without a key (whose 401 closes, also after `Expect:
100-continue`) and duplicated key headers. Every refusal is the contract's JSON error with a
request id, is counted and logged, and closes the connection; nothing reaches Gini."""

from __future__ import annotations

import asyncio
import functools
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.app import FORWARD, Services, build_proxy_app
from proxy.config import InboundAuthConfig, build_config
from proxy.errors import BadRequest
from proxy.log import Redactor, configure_logging
from proxy.web.middleware import inbound_check
from proxy.web.targets import routed_to_forward

from .conftest import HMAC_KEY as HMAC
from .conftest import INBOUND_KEY, RunningProxy, StartProxy, examples
from .test_client_timeouts import connect, parse_answer, read_until_closed

USER_LINE = b"X-User-Id: alice@example.com\r\n"


class RecordingUpstream:
    """A Pay API stand-in that answers 200 to anything and records every path it received."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.raw_path)
        return web.json_response({"ok": True})


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    recorder = RecordingUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", recorder.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    recorder.url = f"http://{host}:{port}"
    yield recorder
    await runner.cleanup()


async def exchange(proxy: RunningProxy, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data` on one fresh connection; everything the proxy sends until it closes."""
    reader, writer = await connect(proxy.url)
    try:
        writer.write(data)
        await writer.drain()
        return await read_until_closed(reader, timeout)
    finally:
        writer.close()


def one_error(raw: bytes, status: int, code: str) -> dict[str, Any]:
    """`raw` holds exactly one answer, the contract's error, and it closed the connection."""
    got, headers, body = parse_answer(raw)
    assert got == status, raw[:300]
    assert raw.count(b"HTTP/1.1 ") == 1, raw  # nothing pipelined behind it was answered
    error: dict[str, Any] = json.loads(body)
    assert error == {
        "error": code,
        "message": error["message"],
        "requestId": headers["x-request-id"],
    }
    assert headers["connection"] == "close"
    assert "retry-after" not in headers  # retrying the same request cannot help
    return error


def requests_counted(proxy: RunningProxy, status: int) -> float:
    registry = proxy.metrics.registry
    total = 0.0
    for family in registry.collect():
        if family.name != "gini_proxy_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("status") == str(status):
                assert sample.labels["route"] == "other"  # bounded, whatever the target was
                total += sample.value
    return total


def access_lines(proxy: RunningProxy, stream: io.StringIO) -> list[dict[str, Any]]:
    proxy.services.access_log.flush()
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [e for e in entries if e["logger"] == "proxy.access"]


SMUGGLED = b"GET /x/SMUGGLED HTTP/1.1\r\nHost: proxy.test\r\n" + USER_LINE + b"\r\n"

BAD_TARGETS = {
    "connect": (b"CONNECT gini.example:443 HTTP/1.1\r\nHost: gini.example:443\r\n\r\n", 405),
    "options-star": (b"OPTIONS * HTTP/1.1\r\nHost: proxy.test\r\n\r\n", 405),
    "encoded-lf": (
        b"GET /documents%0a HTTP/1.1\r\nHost: proxy.test\r\n" + USER_LINE + b"\r\n",
        400,
    ),
    "encoded-crlf": (
        b"GET /x%0d%0aX-Injected:%20yes HTTP/1.1\r\nHost: proxy.test\r\n" + USER_LINE + b"\r\n",
        400,
    ),
}


@pytest.mark.parametrize("name", list(BAD_TARGETS))
async def test_a_bad_target_gets_a_contract_error_and_what_follows_never_reaches_gini(
    start_proxy: StartProxy,
    upstream: RecordingUpstream,
    log_stream: io.StringIO,
    name: str,
) -> None:
    proxy = await start_proxy(upstream={"pay_api": upstream.url})
    configure_logging("info", Redactor(proxy.config.secrets()), log_stream)
    request, status = BAD_TARGETS[name]
    before = requests_counted(proxy, status)
    raw = await exchange(proxy, request + SMUGGLED)  # a second request pipelined behind it
    code = "method_not_allowed" if status == 405 else "bad_request"
    error = one_error(raw, status, code)
    assert upstream.paths == []
    assert requests_counted(proxy, status) == before + 1
    (entry,) = access_lines(proxy, log_stream)
    assert (entry["status"], entry["route"]) == (status, "other")
    assert entry["request_id"] == error["requestId"]
    # The listener itself is unharmed: the same request alone is forwarded.
    answer = await exchange(proxy, SMUGGLED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert parse_answer(answer)[0] == 200
    assert upstream.paths == ["/x/SMUGGLED"]


def big_head(size: int, path: bytes = b"/documents") -> bytes:
    """A GET whose head is about `size` bytes, in header lines each within aiohttp's per-line
    limit (8190) and few enough for its count limit (128): only a total bound can refuse it."""
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: proxy.test", USER_LINE.strip()]
    filler = 8000
    n = 0
    while sum(len(line) + 2 for line in lines) < size - filler - 20:
        lines.append(b"X-Filler-%d: " % n + b"a" * filler)
        n += 1
    lines.append(b"X-Last: " + b"b" * max(1, size - sum(len(x) + 2 for x in lines) - 12))
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def test_a_1_mb_head_gets_431_while_it_arrives(
    start_proxy: StartProxy, upstream: RecordingUpstream
) -> None:
    proxy = await start_proxy(upstream={"pay_api": upstream.url})
    before = requests_counted(proxy, 431)
    head = big_head(1 << 20)
    assert len(head) >= 1 << 20
    reader, writer = await connect(proxy.url)
    try:
        writer.write(head)
        # Refused once past the bound, while the rest of the megabyte may still be in flight.
        raw = await read_until_closed(reader, 10)
    finally:
        writer.close()
    one_error(raw, 431, "headers_too_large")
    assert upstream.paths == []
    assert requests_counted(proxy, 431) == before + 1


async def test_a_head_pipelined_behind_a_request_is_measured_too(
    start_proxy: StartProxy, upstream: RecordingUpstream, log_stream: io.StringIO
) -> None:
    proxy = await start_proxy(upstream={"pay_api": upstream.url})
    configure_logging("info", Redactor(proxy.config.secrets()), log_stream)
    first = b"GET /first HTTP/1.1\r\nHost: proxy.test\r\n" + USER_LINE + b"\r\n"
    raw = await exchange(proxy, first + big_head(64 << 10, b"/second"))
    ok, _, rest = raw.partition(b"\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")
    second = rest[rest.index(b"HTTP/1.1 ") :]
    one_error(second, 431, "headers_too_large")
    assert upstream.paths == ["/first"]
    statuses = [e["status"] for e in access_lines(proxy, log_stream)]
    assert statuses == [200, 431]


async def test_a_head_at_the_bound_is_served(
    start_proxy: StartProxy, upstream: RecordingUpstream
) -> None:
    proxy = await start_proxy(upstream={"pay_api": upstream.url}, max_header_bytes=40000)
    head = big_head(38000).replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    assert parse_answer(await exchange(proxy, head))[0] == 200
    over = big_head(48000)
    one_error(await exchange(proxy, over), 431, "headers_too_large")


# --- inbound auth --------------------------------------------------------------------------------

KEYED = {"inbound_auth": {"keys": INBOUND_KEY}}
KEY_LINE = f"X-Proxy-Key: {INBOUND_KEY}\r\n".encode()


async def test_a_401_closes_the_connection(
    start_proxy: StartProxy, upstream: RecordingUpstream
) -> None:
    proxy = await start_proxy(upstream={"pay_api": upstream.url}, **KEYED)
    request = b"GET /documents HTTP/1.1\r\nHost: proxy.test\r\n" + USER_LINE + b"\r\n"
    # Sent twice on one connection: the second is never read, the connection is gone.
    raw = await exchange(proxy, request + request)
    one_error(raw, 401, "unauthenticated")
    assert upstream.paths == []


async def test_an_unauthenticated_expect_100_continue_gets_its_401_first(
    start_proxy: StartProxy, upstream: RecordingUpstream
) -> None:
    proxy = await start_proxy(upstream={"pay_api": upstream.url}, **KEYED)
    head = (
        b"POST /documents HTTP/1.1\r\nHost: proxy.test\r\n" + USER_LINE
        + b"Content-Type: application/pdf\r\nContent-Length: 5000\r\n"
        + b"Expect: 100-continue\r\n\r\n"
    )  # fmt: skip
    reader, writer = await connect(proxy.url)
    try:
        writer.write(head)  # the body is never sent: the answer must come anyway
        async with asyncio.timeout(5):
            raw = await reader.readuntil(b"\r\n\r\n")
            length = int(parse_answer(raw)[1]["content-length"])
            raw += await reader.readexactly(length)
    finally:
        writer.close()
    assert not raw.startswith(b"HTTP/1.1 100"), raw[:100]
    one_error(raw, 401, "unauthenticated")
    # With the key, the body is still invited.
    reader, writer = await connect(proxy.url)
    try:
        writer.write(head.replace(b"Expect:", KEY_LINE + b"Expect:"))
        async with asyncio.timeout(5):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue")
    finally:
        writer.close()


@pytest.mark.parametrize(
    "second",
    [KEY_LINE, KEY_LINE.lower(), b"X-PROXY-KEY: other\r\n", KEY_LINE.replace(b"-", b"_", 2)],
    ids=["same", "lower-case", "different", "underscores"],
)
async def test_two_key_headers_get_400(
    start_proxy: StartProxy, upstream: RecordingUpstream, second: bytes
) -> None:
    proxy = await start_proxy(upstream={"pay_api": upstream.url}, **KEYED)
    head = b"GET /documents HTTP/1.1\r\nHost: proxy.test\r\n" + USER_LINE + KEY_LINE + second
    error = one_error(await exchange(proxy, head + b"\r\n"), 400, "bad_request")
    assert INBOUND_KEY not in error["message"]
    assert upstream.paths == []
    one = head.removesuffix(second) + b"Connection: close\r\n\r\n"
    assert parse_answer(await exchange(proxy, one))[0] == 200


def build_inbound(key: str) -> InboundAuthConfig:
    minimal = {
        "client": {"id": "my-client", "secret": "client-secret-value-4f1c2e"},
        "identity": {"hmac_key": "hmac-key-0123456789abcdef0123456789abcdef"},
        "inbound_auth": {"keys": key},
    }
    auth = build_config(minimal, {}, Path("/")).inbound_auth
    assert auth is not None
    return auth


@given(
    spellings=st.lists(
        st.tuples(st.lists(st.booleans(), min_size=11, max_size=11), st.booleans()),
        max_size=3,
    ),
    valid=st.booleans(),
)
def test_exactly_one_key_header_in_any_spelling_is_required(
    spellings: list[tuple[list[bool], bool]], valid: bool
) -> None:
    check = inbound_check(build_inbound(INBOUND_KEY))
    assert check is not None
    headers = CIMultiDict[str]()
    for upper, underscores in spellings:
        name = "".join(
            c.upper() if up else c.lower() for c, up in zip("X-Proxy-Key", upper, strict=True)
        )
        headers.add(name.replace("-", "_") if underscores else name, INBOUND_KEY if valid else "x")
    request = make_mocked_request("GET", "/documents", headers=headers)
    if len(spellings) > 1:
        with pytest.raises(BadRequest):
            check(request)
    else:
        hyphenated = bool(spellings) and not spellings[0][1]
        assert check(request) is (valid and hyphenated)


@functools.cache
def _proxy_app() -> web.Application:
    # The listener's real routes (not started): what the router decides is read off them.
    config = build_config(
        {
            "client": {"id": "c", "secret": "client-secret-0123456789"},
            "identity": {"hmac_key": HMAC},
        },
        {},
        Path("."),
    )
    return build_proxy_app(Services(config))


_TOKENS = ["a", "_", "-", ".", "%2F", "%5F", "%0a", "%0D", "\n", ":", " ", "*", "?", "#", "/", "%"]
_SEGMENT = st.lists(st.sampled_from(_TOKENS), max_size=8).map("".join)


@settings(max_examples=examples(400), deadline=None)
@given(
    prefix=st.sampled_from(["/", "/_proxy/", "/_proxy", "/%5Fproxy/", "/_proxy%2F", "", "*"]),
    rest=_SEGMENT,
    method=st.sampled_from(["GET", "POST", "DELETE", "PATCH", "CONNECT", "OPTIONS"]),
    expect=st.booleans(),
)
def test_the_flow_1_shortcut_takes_exactly_what_the_router_gives_flow_1(
    prefix: str, rest: str, method: str, expect: bool
) -> None:
    # Pre-routing calls flow 1's handler itself when the router would: the shortcut must
    # never take a request the router gives to another route (a /_proxy/ endpoint, a refusal),
    # and should take every other one, except with `Expect` (the router runs its handler).
    app = _proxy_app()
    headers = CIMultiDict({"Expect": "100-continue"} if expect else {})
    try:
        request = make_mocked_request(method, prefix + rest, headers=headers, app=app)
        resolved = asyncio.run(app.router.resolve(request))
    except ValueError:  # not a target yarl can parse: never reaches the router either
        return
    router_forwards = resolved.handler is app[FORWARD]
    if expect:
        assert not routed_to_forward(request)
    else:
        assert routed_to_forward(request) == router_forwards
