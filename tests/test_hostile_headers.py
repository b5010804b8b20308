"""Hostile headers both ways: ambiguous identities from callers, and what Gini's answers may
carry back (credential headers, versioned `Server`, interim 1xx answers), plus
`Expect: 100-continue` for bodies over the limit. Real proxy, real client; Gini is the
simulator or, for answers no sane server sends, a raw HTTP/1.1 responder on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import logging
import os
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from aiohttp_client_cache.response import CachedResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.config import build_config
from proxy.errors import InvalidUser, MissingUser
from proxy.forwarding.relay import Relay
from proxy.forwarding.rewrite import UrlRewriter
from proxy.identity import MAX_USER_ID_BYTES, user_id_from
from proxy.lifecycle import Lifecycle
from proxy.log import REDACTED, Redactor, configure_logging
from proxy.metrics import Metrics
from proxy.sandbox import GiniSimulator
from proxy.web.accesslog import AccessLog
from proxy.web.aiohttp_server import SERVER
from proxy.web.context import RequestContext
from proxy.web.middleware import observer
from proxy.web.routes import RouteTable

from .conftest import HMAC_KEY, USER, RunningProxy, StartProxy, config_data, examples

FORBIDDEN = (
    "authorization",
    "proxy-authorization",
    "x-user-identifier",
    "x-jwt-authorization",
    "set-cookie",
)
DERIVED = "/_proxy/tokens/derived"
ANONYMOUS = "/_proxy/tokens/anonymous"
ERASE = "/_proxy/users/anonymous"
# Settings for property tests that drive one running proxy through many examples.
ONE_PROXY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def identifier(raw: bytes) -> str:
    return hmac.new(HMAC_KEY.encode(), raw, hashlib.sha256).hexdigest()


def swapcase_some(name: str, pattern: int) -> str:
    """`name` with the case of letters flipped where `pattern` has a bit set."""
    return "".join(c.swapcase() if pattern >> i & 1 else c for i, c in enumerate(name))


async def error_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body: dict[str, Any] = await response.json()
    assert body["requestId"] == response.headers["X-Request-Id"]
    return body


# --- a raw HTTP/1.1 responder: answers no well-behaved server library would send ------------


class RawUpstream:
    """Loopback TCP server reading HTTP/1.1 request heads and answering with queued bytes."""

    def __init__(self) -> None:
        self.answers: list[bytes] = []
        self.default = plain_answer()
        self.late = b""  # written once, a moment after the next answer, on the same connection
        self.connections = 0
        self.requests: list[bytes] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length" and int(value):
                        await reader.readexactly(int(value))
                self.requests.append(head)
                writer.write(self.answers.pop(0) if self.answers else self.default)
                await writer.drain()
                if self.late:
                    late, self.late = self.late, b""
                    await asyncio.sleep(0.2)  # slow peer: bytes Gini sends after its answer
                    writer.write(late)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


def plain_answer(
    status: bytes = b"200 OK", headers: tuple[tuple[bytes, bytes], ...] = (), body: bytes = b"ok"
) -> bytes:
    lines = [b"HTTP/1.1 " + status, *(n + b": " + v for n, v in headers)]
    lines += [b"Content-Type: text/plain", b"Content-Length: %d" % len(body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    async with RawUpstream() as upstream:
        yield upstream


async def raw_exchange(port: int, data: bytes, read_timeout: float = 5.0) -> bytes:
    """Send `data` on a fresh connection and read until the peer closes (or the timeout)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        async with asyncio.timeout(read_timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def raw_call(
    url: str, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
) -> tuple[int, CIMultiDict[str], bytes]:
    """One request over a raw socket, header lines exactly as given (aiohttp's client merges
    names that differ only in case), and the parsed answer (Content-Length framed)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: proxy.test", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    data = await raw_exchange(port_of(url), "\r\n".join(lines).encode() + b"\r\n\r\n" + body)
    head, _, content = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    answer: CIMultiDict[str] = CIMultiDict()
    for line in header_lines:
        name, _, value = line.partition(":")
        answer.add(name, value.strip())
    return int(status_line.split()[1]), answer, content


# --- 1. unambiguous identity -----------------------------------------------------------------

DUPLICATES = [
    [("X-User-Id", "alice"), ("x-user-id", "mallory")],
    [("X-User-Id", "alice"), ("X-User-Id", "alice")],
    [("x-user-id", "alice"), ("X-USER-ID", "alice"), ("X-User-Id", "bob")],
    [("X-User-Id", "alice"), ("X-User-Id", "")],
]


@pytest.mark.parametrize("headers", DUPLICATES)
async def test_two_identity_headers_on_flow_1_are_400_and_nothing_is_forwarded(
    proxy: RunningProxy, sim: GiniSimulator, headers: list[tuple[str, str]]
) -> None:
    before = len(sim.state.requests)
    for method, path in (("GET", "/documents"), ("POST", "/_sandbox/echo")):
        status, answer, content = await raw_call(proxy.url, method, path, headers, b"x")
        body = json.loads(content)
        assert (status, body["error"]) == (400, "invalid_user")
        assert "ambiguous" in body["message"]
        assert body["requestId"] == answer["X-Request-Id"]
        assert "alice" not in content.decode()
    assert len(sim.state.requests) == before


@pytest.mark.parametrize("path", [DERIVED, ANONYMOUS])
async def test_two_identity_headers_on_token_endpoints_are_400(
    proxy: RunningProxy, sim: GiniSimulator, path: str
) -> None:
    before = len(sim.state.requests)
    headers = [("X-User-Id", "alice"), ("x-user-id", "bob")]
    status, _, content = await raw_call(proxy.url, "POST", path, headers)
    body = json.loads(content)
    assert (status, body["error"], "ambiguous" in body["message"]) == (400, "invalid_user", True)
    assert len(sim.state.requests) == before
    assert sim.state.user_emails() == []
    assert len(proxy.services.token_caches["derived"]) == 0


async def test_two_identity_headers_never_erase_an_anonymous_user(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    async with proxy.client.post(proxy.url + ANONYMOUS, headers=USER) as response:
        assert response.status == 200
        first = (await response.json())["access_token"]
    status, _, content = await raw_call(
        proxy.url, "DELETE", ERASE, [*USER.items(), ("x-user-id", USER["X-User-Id"])]
    )
    assert (status, json.loads(content)["error"]) == (400, "invalid_user")
    # Still stored, still cached: the same token comes back, no second Gini user.
    async with proxy.client.post(proxy.url + ANONYMOUS, headers=USER) as response:
        assert (await response.json())["access_token"] == first
    assert len(sim.state.user_emails()) == 1


async def test_a_configured_identity_header_is_checked_the_same_way(
    start_proxy: StartProxy, sim: GiniSimulator
) -> None:
    proxy = await start_proxy(identity={"header": "X-Internal-User"})
    before = len(sim.state.requests)
    headers = [("x-internal-user", "alice"), ("X-INTERNAL-USER", "bob")]
    status, _, content = await raw_call(proxy.url, "GET", "/documents", headers)
    assert (status, json.loads(content)["error"]) == (400, "invalid_user")
    # The default header name means nothing here: one X-Internal-User is one identity.
    one = {"X-Internal-User": "alice", "X-User-Id": "bob"}
    async with proxy.client.get(proxy.url + "/_sandbox/echo", headers=one) as response:
        assert response.status == 200
    assert len(sim.state.requests) == before + 1


# Ids a caller may send: no control characters, no lone surrogates, no outer whitespace, at
# most 256 UTF-8 bytes; letters with combining marks included so NFC and NFD forms occur.
_ID_CHAR = st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))
_ids = (
    st.text(_ID_CHAR, min_size=1, max_size=40)
    .map(str.strip)
    .filter(lambda s: 0 < len(s.encode("utf-8")) <= MAX_USER_ID_BYTES)
)
_forms = st.sampled_from(["as is", "NFC", "NFD"])


def in_form(value: str, form: str) -> str:
    if form == "NFC":
        return unicodedata.normalize("NFC", value)
    if form == "NFD":
        return unicodedata.normalize("NFD", value)
    return value


@ONE_PROXY
@given(
    ids=st.lists(st.tuples(_ids, _forms, st.integers(0, 255)), min_size=1, max_size=3),
    duplicate_first=st.booleans(),
)
async def test_property_the_identifier_is_the_hmac_of_the_bytes_sent(
    proxy: RunningProxy,
    sim: GiniSimulator,
    ids: list[tuple[str, str, int]],
    duplicate_first: bool,
) -> None:
    values = [in_form(v, form) for v, form, _ in ids]
    names = [swapcase_some("X-User-Id", pattern) for _, _, pattern in ids]
    headers = list(zip(names, values, strict=True))
    if duplicate_first:
        headers.append(headers[0])  # the very same header twice is just as ambiguous
    before = len(sim.state.requests)
    status, _, content = await raw_call(proxy.url, "GET", "/_sandbox/echo", headers)
    if len(headers) > 1:
        assert (status, json.loads(content)["error"]) == (400, "invalid_user")
        assert len(sim.state.requests) == before
        return
    assert status == 200, content
    seen = json.loads(content)
    forwarded = [v for k, v in seen["headers"] if k.lower() == "x-user-identifier"]
    # Hashed as the UTF-8 bytes that arrived: no normalisation, no case folding.
    assert forwarded == [identifier(values[0].encode("utf-8"))]
    assert not [v for k, v in seen["headers"] if k.lower() == "x-user-id"]


@given(
    st.lists(
        st.tuples(st.sampled_from(["X-User-Id", "X-Other"]), st.integers(0, 511), _ids),
        max_size=4,
    )
)
def test_property_user_id_from_takes_exactly_one_header(
    headers: list[tuple[str, int, str]],
) -> None:
    sent = CIMultiDict((swapcase_some(name, pattern), value) for name, pattern, value in headers)
    mine = [value for name, _, value in headers if name == "X-User-Id"]
    if not mine:
        with pytest.raises(MissingUser):
            user_id_from(sent, "x-USER-id")
    elif len(mine) > 1:
        with pytest.raises(InvalidUser, match="ambiguous"):
            user_id_from(sent, "x-USER-id")
    else:
        assert user_id_from(sent, "x-USER-id") == mine[0]


async def test_nfc_and_nfd_forms_of_an_id_are_different_users(proxy: RunningProxy) -> None:
    nfc = unicodedata.normalize("NFC", "Jürgen")
    nfd = unicodedata.normalize("NFD", "Jürgen")
    assert nfc != nfd
    got = []
    for user_id in (nfc, nfd):
        async with proxy.client.get(
            proxy.url + "/_sandbox/echo", headers={"X-User-Id": user_id}
        ) as response:
            seen = await response.json()
        got += [v for k, v in seen["headers"] if k.lower() == "x-user-identifier"]
    assert got == [identifier(nfc.encode()), identifier(nfd.encode())]
    assert got[0] != got[1]


async def test_every_copy_of_the_identity_header_is_hidden_from_the_logs(
    sim: GiniSimulator, tmp_path: Path, client: aiohttp.ClientSession, log_stream: io.StringIO
) -> None:
    """The proxy's middleware in front of a handler that logs what it was sent: each of
    several identity header values is redacted, not only the first."""
    config = build_config(config_data(sim, tmp_path), os.environ, tmp_path)
    configure_logging("debug", Redactor(config.secrets()), log_stream)
    chatty = logging.getLogger("tests.chatty")

    async def handler(request: web.Request) -> web.Response:
        chatty.warning("ids: %s", " ".join(request.headers.getall("X-User-Id")))
        return web.Response(text="ok")

    observed = observer(config, Metrics(), RouteTable([]), Lifecycle(), AccessLog(("unused",)))
    app = web.Application()
    app.router.add_get("/", observed(handler))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        ids = [("X-User-Id", "first-user-4711"), ("x-user-id", "second-user-0815")]
        status, _, _ = await raw_call(f"http://127.0.0.1:{port}", "GET", "/", ids)
        assert status == 200
    finally:
        await runner.cleanup()
    (line,) = [json.loads(x) for x in log_stream.getvalue().splitlines() if "ids:" in x]
    assert line["message"] == f"ids: {REDACTED} {REDACTED}"


# --- 2. what the caller gets back ------------------------------------------------------------


def echo_path(headers: list[tuple[str, str]]) -> str:
    query = "&".join("header=" + quote(f"{n}:{v}", safe="") for n, v in headers)
    return "/_sandbox/echo?" + query


def assert_clean(response: aiohttp.ClientResponse) -> None:
    names = [name.decode().lower() for name, _ in response.raw_headers]
    assert not set(names) & set(FORBIDDEN), names
    assert response.headers.getall("Server") == [SERVER]


HOSTILE = [
    ("Authorization", "Bearer gini-token-0001"),
    ("authorization", "Basic c2VjcmV0"),
    ("Proxy-Authorization", "Basic c2VjcmV0"),
    ("X-User-Identifier", "f00d"),
    ("X-JWT-Authorization", "eyJhbGciOi"),
    ("Set-Cookie", "session=abc; HttpOnly"),
    ("set-cookie", "other=def"),
    ("Server", "nginx/1.25.3 OpenSSL/3.0.2"),
    ("X-Kept", "yes"),
]


async def test_credential_headers_and_server_versions_from_gini_never_reach_the_caller(
    proxy: RunningProxy,
) -> None:
    for method in ("GET", "HEAD", "POST"):
        async with proxy.client.request(
            method, proxy.url + echo_path(HOSTILE), headers=USER
        ) as response:
            assert response.status == 200
            assert_clean(response)
            assert response.headers.getall("X-Kept") == ["yes"]


_FORBIDDEN_OR_BENIGN = st.sampled_from([*FORBIDDEN, "server", "x-benign", "cache-control"])
_VALUE = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)


@ONE_PROXY
@given(
    st.lists(
        st.tuples(_FORBIDDEN_OR_BENIGN, st.integers(0, 1 << 20), _VALUE), min_size=1, max_size=8
    )
)
async def test_property_no_forbidden_header_reaches_the_caller(
    proxy: RunningProxy, headers: list[tuple[str, int, str]]
) -> None:
    sent = [(swapcase_some(name, pattern), value) for name, pattern, value in headers]
    async with proxy.client.get(proxy.url + echo_path(sent), headers=USER) as response:
        assert response.status == 200
        assert_clean(response)
        benign = [v for n, v in sent if n.lower() == "x-benign"]
        assert response.headers.getall("X-Benign", []) == benign


def test_property_relay_headers_drop_forbidden_names_whatever_the_case() -> None:
    relay = Relay(UrlRewriter("https://pay-api.gini.net", "http://proxy.test"), 1 << 20, None, 5)

    @given(st.lists(st.tuples(_FORBIDDEN_OR_BENIGN, st.integers(0, 1 << 20), _VALUE)))
    @settings(max_examples=examples(300))
    def check(headers: list[tuple[str, int, str]]) -> None:
        upstream = CIMultiDict((swapcase_some(n, p), v) for n, p, v in headers)
        kept = relay.headers(upstream, RequestContext("rid", "other"))
        assert not {name.lower() for name in kept} & {*FORBIDDEN, "server"}

    check()


async def test_the_response_cache_neither_stores_nor_replays_credential_headers(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(
        response_cache={"routes": ["/_sandbox/echo"], "ttl_seconds": 60, "backend": "memory"}
    )
    cache = proxy.services.response_cache
    assert cache is not None
    hostile = [(n, v) for n, v in HOSTILE if n.lower() != "set-cookie"]  # would not be stored
    path = echo_path(hostile)
    for expected in ("MISS", "HIT"):
        async with proxy.client.get(proxy.url + path, headers=USER) as response:
            assert response.headers["X-Cache"] == expected
            assert_clean(response)
            assert response.headers["X-Kept"] == "yes"
        await cache.drain()  # entries are written in the background
    entries = [entry async for entry in cache.backend.responses.values()]
    assert len(entries) == 1
    assert isinstance(entries[0], CachedResponse)
    stored = {name.decode().lower() for name, _ in entries[0].raw_headers}
    assert "x-kept" in stored
    assert not stored & set(FORBIDDEN)


async def test_server_header_has_no_version_on_any_answer_of_either_listener(
    proxy: RunningProxy,
) -> None:
    async def server_of(method: str, url: str, **kw: Any) -> list[str]:
        async with proxy.client.request(method, url, **kw) as response:
            await response.read()
            return response.headers.getall("Server")

    answers = [
        await server_of("GET", proxy.url + "/documents", headers=USER),  # relayed
        await server_of("GET", proxy.url + "/documents"),  # our JSON error
        await server_of("POST", proxy.url + DERIVED, headers=USER),  # a token
        await server_of("GET", proxy.url + "/_proxy/nothing", headers=USER),  # router 404
        await server_of("GET", proxy.admin_url + "/healthz"),
        await server_of("GET", proxy.admin_url + "/metrics"),
        await server_of("GET", proxy.admin_url + "/nothing-here"),  # the admin router's 404
    ]
    assert answers == [[SERVER]] * len(answers)
    for url in (proxy.url, proxy.admin_url):  # aiohttp's parser refusing the request
        data = await raw_exchange(port_of(url), b"GET / HTTP/1.1\r\nHost: x\r\nBad\x01: y\r\n\r\n")
        head = data.partition(b"\r\n\r\n")[0]
        assert head.split(b"\r\n")[0].split()[1] == b"400"
        assert [line for line in head.split(b"\r\n") if line.lower().startswith(b"server:")] == [
            b"Server: " + SERVER.encode()
        ]


# --- interim (1xx) answers from upstream -----------------------------------------------------

REFUSED_INTERIM = [
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    b"\x81\x05hello",
    b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    b"HTTP/1.1 102 Processing\r\n\r\n" + plain_answer(body=b"after 102"),
    b"HTTP/1.1 199 Whatever\r\n\r\n" + plain_answer(body=b"after 199"),
]


@pytest.mark.parametrize("answer", REFUSED_INTERIM, ids=["101-upgrade", "101", "102", "199"])
async def test_refused_interim_answers_become_502_and_the_connection_is_dropped(
    start_proxy: StartProxy, raw_upstream: RawUpstream, answer: bytes
) -> None:
    proxy = await start_proxy(upstream={"pay_api": raw_upstream.url, "max_retries": 0})
    raw_upstream.answers = [answer]
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
        assert response.status == 502
        body = await error_of(response)
        assert body["error"] == "bad_gateway"
        assert_clean(response)
    # The next request gets a connection of its own, and its own answer.
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
        assert (response.status, await response.read()) == (200, b"ok")
    assert raw_upstream.connections == 2
    errors = proxy.metrics.registry.get_sample_value(
        "gini_proxy_upstream_errors_total", {"upstream": "pay_api", "reason": "bad_response"}
    )
    assert errors == 1


async def test_an_unsolicited_101_on_an_idle_connection_is_not_left_for_the_next_request(
    start_proxy: StartProxy, raw_upstream: RawUpstream
) -> None:
    proxy = await start_proxy(upstream={"pay_api": raw_upstream.url, "max_retries": 0})
    raw_upstream.late = REFUSED_INTERIM[1]
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
        assert (response.status, await response.read()) == (200, b"ok")
    # time passes: the 101 must arrive while the connection idles in the pool, which nothing
    # outside the client's pool can observe
    await asyncio.sleep(0.4)
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
        assert (response.status, await response.read()) == (200, b"ok")
    assert raw_upstream.connections == 2


@pytest.mark.parametrize("interim", [b"100 Continue", b"103 Early Hints\r\nLink: </a.css>"])
async def test_100_and_103_are_skipped_and_the_final_answer_relayed(
    start_proxy: StartProxy, raw_upstream: RawUpstream, interim: bytes
) -> None:
    proxy = await start_proxy(upstream={"pay_api": raw_upstream.url})
    raw_upstream.answers = [b"HTTP/1.1 " + interim + b"\r\n\r\n" + plain_answer(body=b"final")]
    for expected in (b"final", b"ok"):
        async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
            assert (response.status, await response.read()) == (200, expected)
            assert "Link" not in response.headers
    assert raw_upstream.connections == 1  # kept alive and reused


async def test_a_101_to_a_token_login_is_502_bad_gateway(
    start_proxy: StartProxy, raw_upstream: RawUpstream
) -> None:
    proxy = await start_proxy(upstream={"pay_api": raw_upstream.url, "max_retries": 0})
    raw_upstream.answers = [REFUSED_INTERIM[0]]
    async with proxy.client.post(proxy.url + DERIVED, headers=USER) as response:
        assert response.status == 502
        assert (await error_of(response))["error"] == "bad_gateway"
        assert_clean(response)


# --- Expect: 100-continue ----------------------------------------------------------------------


def upload_head(length: int, path: str = "/documents") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: proxy.test\r\nX-User-Id: alice\r\n"
        f"Content-Type: application/pdf\r\nContent-Length: {length}\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()


async def test_expect_with_a_length_over_the_limit_gets_413_at_once_without_100(
    start_proxy: StartProxy, sim: GiniSimulator
) -> None:
    proxy = await start_proxy(max_body_bytes=1000)
    before = len(sim.state.requests)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
    try:
        writer.write(upload_head(1001))
        await writer.drain()
        async with asyncio.timeout(2):  # answered without waiting for any body byte
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b"100 Continue" not in head
        assert b"connection: close" in head.lower()
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = json.loads(await reader.readexactly(length))
        assert body["error"] == "payload_too_large"
    finally:
        writer.close()
    assert len(sim.state.requests) == before


async def test_expect_within_the_limit_gets_100_and_the_upload_works(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(max_body_bytes=1000)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy.url))
    try:
        writer.write(upload_head(1000, "/_sandbox/echo"))
        await writer.drain()
        async with asyncio.timeout(5):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"x" * 1000)
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    # And the same through a client that waits for the 100 before sending.
    async with proxy.client.post(
        proxy.url + "/_sandbox/echo", headers=USER, data=b"y" * 1000, expect100=True
    ) as response:
        assert response.status == 200
        assert (await response.json())["body_bytes"] == 1000
    async with proxy.client.post(
        proxy.url + "/_sandbox/echo", headers=USER, data=b"y" * 1001, expect100=True
    ) as response:
        assert response.status == 413
        assert (await error_of(response))["error"] == "payload_too_large"


async def test_an_unknown_expectation_is_ignored_not_answered_in_plain_text(
    proxy: RunningProxy,
) -> None:
    async with proxy.client.post(
        proxy.url + "/_sandbox/echo", headers={**USER, "Expect": "something-else"}, data=b"z"
    ) as response:
        assert response.status == 200
        seen = await response.json()
    assert not [v for k, v in seen["headers"] if k.lower() == "expect"]
