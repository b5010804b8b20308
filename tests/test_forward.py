"""Flow 1 end to end: a real client, the real proxy, the Gini simulator on loopback."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.app import Services
from proxy.config import build_config
from proxy.config.memo import SIZES
from proxy.errors import BadRequest
from proxy.forwarding.handler import Forwarder
from proxy.forwarding.target import has_dot_segment
from proxy.sandbox import GiniSimulator

from .conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    HMAC_KEY,
    INBOUND_KEY,
    USER,
    RunningProxy,
    StartProxy,
    eventually,
)

BASIC = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()


def identifier(user_id: str) -> str:
    return hmac.new(HMAC_KEY.encode(), user_id.encode(), hashlib.sha256).hexdigest()


async def echo(
    proxy: RunningProxy, headers: Any = None, path: str = "/_sandbox/echo", **kw: Any
) -> Any:
    async with proxy.client.request(
        kw.pop("method", "GET"),
        proxy.url + path,
        headers=headers if headers is not None else USER,
        **kw,
    ) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def header_values(seen: Any, name: str) -> list[str]:
    return [value for key, value in seen["headers"] if key.lower() == name.lower()]


async def test_injects_credentials_and_derived_identifier(proxy: RunningProxy) -> None:
    seen = await echo(proxy)
    assert header_values(seen, "Authorization") == [BASIC]
    assert header_values(seen, "X-User-Identifier") == [identifier("alice@example.com")]


async def test_caller_credentials_identity_and_hop_by_hop_never_forwarded(
    proxy: RunningProxy,
) -> None:
    sent = [
        ("X-User-Id", "alice@example.com"),
        ("Authorization", "Bearer caller-token"),
        ("Authorization", "Basic Y2FsbGVyOnNlY3JldA=="),
        ("Proxy-Authorization", "Basic eDp5"),
        ("X-User-Identifier", "spoofed-identifier"),
        ("X-JWT-Authorization", "Bearer jwt"),
        ("Cookie", "session=abc"),
        ("Connection", "keep-alive, X-Private-Hop"),
        ("X-Private-Hop", "secret-hop"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Forwarded", "for=10.0.0.1"),
        ("X-Document-Metadata-Branchid", "branch-7"),
        ("Accept", "application/vnd.gini.v1+json"),
    ]
    seen = await echo(proxy, headers=sent)
    names = {name.lower() for name, _ in seen["headers"]}
    never = {"x-user-id", "proxy-authorization", "x-jwt-authorization", "cookie", "x-private-hop"}
    never |= {"keep-alive", "te", "forwarded"}
    assert not never & names
    assert header_values(seen, "Authorization") == [BASIC]  # overwritten, not appended
    assert header_values(seen, "X-User-Identifier") == [identifier("alice@example.com")]
    assert header_values(seen, "X-Document-Metadata-Branchid") == ["branch-7"]
    assert header_values(seen, "Accept") == ["application/vnd.gini.v1+json"]
    assert "alice@example.com" not in json.dumps(seen["headers"])


async def test_underscore_spellings_of_identity_headers_never_reach_gini(
    start_proxy: StartProxy,
) -> None:
    """Many stacks read `_` as `-`: `X_User_Identifier` would be Gini's identity header."""
    proxy = await start_proxy(inbound_auth={"keys": INBOUND_KEY})
    sent = [
        ("X-User-Id", "alice@example.com"),
        ("X-Proxy-Key", INBOUND_KEY),
        ("X_User_Identifier", "forged"),
        ("X_User_Id", "bob"),
        ("x_user_id", "carol"),
        ("X_JWT_Authorization", "Bearer forged"),
        ("Proxy_Authorization", "Basic eDp5"),
        ("X_Request_Id", "forged-request-id"),
        ("Transfer_Encoding", "chunked"),
        ("X_Document_Metadata", "kept"),
    ]
    seen = await echo(proxy, headers=sent)
    names = [name for name, _ in seen["headers"]]
    assert not [name for name in names if "_" in name and name != "X_Document_Metadata"], names
    assert header_values(seen, "X_Document_Metadata") == ["kept"]
    assert header_values(seen, "X-User-Identifier") == [identifier("alice@example.com")]
    assert "forged" not in json.dumps(seen["headers"])
    for value in ("bob", "carol", INBOUND_KEY):
        assert value not in json.dumps(seen["headers"])


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_user"),
        ({"X-User-Id": ""}, "invalid_user"),
        ({"X-User-Id": "x" * 257}, "invalid_user"),
        ({"X-User-Id": "ä" * 129}, "invalid_user"),  # 258 bytes in UTF-8
        ({"X-User-Id": "tab\there"}, "invalid_user"),
    ],
)
async def test_bad_identity_is_rejected_and_nothing_forwarded(
    proxy: RunningProxy, sim: GiniSimulator, headers: dict[str, str], code: str
) -> None:
    before = len(sim.state.requests)
    async with proxy.client.get(proxy.url + "/documents", headers=headers) as response:
        assert response.status == 400
        body = await response.json()
    assert body["error"] == code
    assert body["requestId"] == response.headers["X-Request-Id"]
    assert set(body) == {"error", "message", "requestId"}
    assert len(sim.state.requests) == before
    for value in headers.values():
        if value:
            assert value not in json.dumps(body)


@pytest.mark.parametrize(
    "raw", [b"del\x7fhere", b"nul\x00here", b"c1\xc2\x85here", b"bell\x07", b"\xff\xfe"]
)
async def test_control_characters_in_identity_get_a_json_400(
    proxy: RunningProxy, sim: GiniSimulator, raw: bytes
) -> None:
    before = len(sim.state.requests)
    status, data = await _raw_request(proxy, "GET /documents HTTP/1.1", user=raw)
    assert status == 400
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower()
    assert json.loads(body)["error"] in ("invalid_user", "bad_request")
    assert len(sim.state.requests) == before


async def test_longest_allowed_identity_is_accepted(proxy: RunningProxy) -> None:
    seen = await echo(proxy, headers={"X-User-Id": "x" * 256})
    assert header_values(seen, "X-User-Identifier") == [identifier("x" * 256)]


async def test_request_ids_flow_both_ways(proxy: RunningProxy, sim: GiniSimulator) -> None:
    async with proxy.client.get(
        proxy.url + "/_sandbox/echo", headers={**USER, "X-Request-Id": "caller-req-42"}
    ) as response:
        seen = await response.json()
        assert response.headers["X-Request-Id"] == "caller-req-42"
    assert header_values(seen, "X-Request-Id") == ["caller-req-42"]

    async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
        ours = response.headers["X-Request-Id"]
        assert len(ours) == 32
        gini = response.headers["X-Gini-Request-Id"]
    recorded = sim.state.requests[-1]
    assert recorded.request_id == gini
    assert {k.lower(): v for k, v in recorded.headers}["x-request-id"] == ours


async def test_invalid_caller_request_id_is_replaced(proxy: RunningProxy) -> None:
    async with proxy.client.get(
        proxy.url + "/_sandbox/echo", headers={**USER, "X-Request-Id": "bad id with spaces"}
    ) as response:
        assert response.headers["X-Request-Id"] != "bad id with spaces"


async def test_upload_location_and_links_point_at_the_proxy(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    public = proxy.config.public_url
    async with proxy.client.post(
        proxy.url + "/documents?filename=a.pdf",
        data=b"%PDF-1.4 hello",
        headers={**USER, "Content-Type": "application/pdf"},
    ) as response:
        assert response.status == 201
        location = response.headers["Location"]
        created = await response.json(content_type=None)
    assert location.startswith(public + "/documents/")
    path = location[len(public) :]
    async with proxy.client.get(proxy.url + path, headers=USER) as response:
        document = await response.json(content_type=None)
    assert document["id"] == created["id"]
    links = list(document["_links"].values()) + [
        url for page in document["pages"] for url in page["images"].values()
    ]
    assert links
    for link in links:
        assert link.startswith(public + "/"), link
        assert sim.pay_api_url not in link


async def test_composite_request_urls_are_rewritten_back_to_gini(proxy: RunningProxy) -> None:
    partials = []
    for name in ("p1", "p2"):
        async with proxy.client.post(
            proxy.url + f"/documents?filename={name}.png",
            data=b"\x89PNG...",
            headers={**USER, "Content-Type": "application/vnd.gini.v1.partial+png"},
        ) as response:
            assert response.status == 201
            partials.append(response.headers["Location"])
    composite = {"partialDocuments": [{"document": url, "rotationDelta": 0} for url in partials]}
    async with proxy.client.post(
        proxy.url + "/documents",
        data=json.dumps(composite),
        headers={**USER, "Content-Type": "application/vnd.gini.v1.composite+json"},
    ) as response:
        assert response.status == 201, await response.text()
        body = await response.json(content_type=None)
    assert {p["document"] for p in body["partialDocuments"]} == set(partials)


async def test_foreign_urls_are_left_alone(proxy: RunningProxy) -> None:
    async with proxy.client.get(
        proxy.url + "/_sandbox/echo?location=https://elsewhere.example/x", headers=USER
    ) as response:
        assert response.headers["Location"] == "https://elsewhere.example/x"


async def test_json_above_rewrite_limit_streams_unchanged(
    start_proxy: StartProxy, sim: GiniSimulator
) -> None:
    proxy = await start_proxy(max_rewrite_bytes=10_000)
    async with proxy.client.get(proxy.url + "/_sandbox/json?size=50000", headers=USER) as response:
        big = await response.read()
    assert sim.pay_api_url.encode() in big
    async with proxy.client.get(proxy.url + "/_sandbox/json?size=5000", headers=USER) as response:
        small = await response.read()
    assert sim.pay_api_url.encode() not in small
    assert proxy.config.public_url.encode() in small


@pytest.mark.slow
async def test_30_mib_upload_streams_intact(proxy: RunningProxy) -> None:
    block = bytes(range(256)) * 4096  # 1 MiB

    async def body() -> Any:
        for _ in range(30):
            yield block

    expected = hashlib.sha256(block * 30).hexdigest()
    seen = await echo(
        proxy, method="POST", data=body(), headers={**USER, "Content-Type": "application/pdf"}
    )
    assert seen["body_bytes"] == 30 * 1024 * 1024
    assert seen["body_sha256"] == expected


@pytest.mark.slow
@pytest.mark.parametrize("chunked", [False, True])
async def test_40_mib_download_streams_intact(proxy: RunningProxy, chunked: bool) -> None:
    from proxy.sandbox import expected_download_sha256

    size = 40 * 1024 * 1024
    digest = hashlib.sha256()
    received = 0
    url = proxy.url + f"/_sandbox/download?bytes={size}" + ("&chunked=1" if chunked else "")
    async with proxy.client.get(url, headers=USER) as response:
        assert response.status == 200
        if not chunked:
            assert response.content_length == size
        async for chunk in response.content.iter_chunked(1 << 20):
            digest.update(chunk)
            received += len(chunk)
    assert received == size
    assert digest.hexdigest() == expected_download_sha256(size)


async def test_body_over_limit_is_413_before_anything_is_sent(
    start_proxy: StartProxy, sim: GiniSimulator
) -> None:
    proxy = await start_proxy(max_body_bytes=1000)
    before = len(sim.state.requests)
    async with proxy.client.post(
        proxy.url + "/documents", data=b"x" * 1001, headers=USER
    ) as response:
        assert response.status == 413
        assert (await response.json())["error"] == "payload_too_large"
    assert len(sim.state.requests) == before


async def test_chunked_body_over_limit_is_413(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(max_body_bytes=100_000)

    async def body() -> Any:
        for _ in range(20):
            yield b"y" * 10_000

    async with proxy.client.post(
        proxy.url + "/_sandbox/echo", data=body(), headers=USER
    ) as response:
        assert response.status == 413
        assert (await response.json())["error"] == "payload_too_large"


async def test_gini_errors_pass_through_unchanged(proxy: RunningProxy, sim: GiniSimulator) -> None:
    async with proxy.client.get(proxy.url + "/documents/does-not-exist", headers=USER) as response:
        assert response.status == 404
        body = await response.json(content_type=None)
    assert set(body) == {"message", "requestId"}  # Gini's shape, not ours
    assert body["requestId"] == response.headers["X-Gini-Request-Id"]
    sim.state.fail_next(1, status=503)
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
        assert response.status == 503
        assert "error" not in await response.json(content_type=None)
    labels = {"upstream": "pay_api", "reason": "status_5xx"}
    assert proxy.metrics.registry.get_sample_value("gini_proxy_upstream_errors_total", labels) == 1


async def test_upstream_down_is_503(start_proxy: StartProxy, unused_tcp_port: int) -> None:
    proxy = await start_proxy(upstream={"pay_api": f"http://127.0.0.1:{unused_tcp_port}"})
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
        assert response.status == 503
        body = await response.json()
    assert body["error"] == "upstream_unavailable"
    sample = proxy.metrics.registry.get_sample_value(
        "gini_proxy_upstream_errors_total", {"upstream": "pay_api", "reason": "connect"}
    )
    assert sample == 2  # a bodiless GET whose connection was refused is sent once more


async def test_upstream_timeout_is_504(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(upstream={"timeout_seconds": 0.3})
    async with proxy.client.get(proxy.url + "/_sandbox/echo?delay=2", headers=USER) as response:
        assert response.status == 504
        assert (await response.json())["error"] == "upstream_timeout"


@pytest.mark.parametrize("route", ["/_sandbox/malformed", "/_sandbox/reset"])
async def test_broken_upstream_answer_is_502(proxy: RunningProxy, route: str) -> None:
    async with proxy.client.get(proxy.url + route, headers=USER) as response:
        assert response.status == 502
        assert (await response.json())["error"] == "bad_gateway"


async def test_caller_disconnect_cancels_upstream_quietly(
    proxy: RunningProxy, sim: GiniSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with pytest.raises(asyncio.TimeoutError):
        async with proxy.client.get(
            proxy.url + "/_sandbox/echo?delay=5",
            headers=USER,
            timeout=aiohttp.ClientTimeout(total=0.3),
        ):
            pass
    await eventually(lambda: sim.state.cancelled_requests > 0, what="the cancel at Gini")
    assert sim.state.cancelled_requests == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert proxy.services.lifecycle.in_flight == 0


async def test_inbound_auth_required_and_stripped(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(
        inbound_auth={"keys": f"# ops team\n{INBOUND_KEY}\nsecond-key-abcdefghij\n"}
    )
    async with proxy.client.get(proxy.url + "/_sandbox/echo", headers=USER) as response:
        assert response.status == 401
        assert (await response.json())["error"] == "unauthenticated"
    async with proxy.client.get(
        proxy.url + "/_sandbox/echo", headers={**USER, "X-Proxy-Key": INBOUND_KEY + "x"}
    ) as response:
        assert response.status == 401
    seen = await echo(proxy, headers={**USER, "X-Proxy-Key": "second-key-abcdefghij"})
    assert not header_values(seen, "X-Proxy-Key")


async def test_unknown_proxy_endpoints_are_never_forwarded(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    before = len(sim.state.requests)
    async with proxy.client.get(proxy.url + "/_proxy/nope", headers=USER) as response:
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"
    assert len(sim.state.requests) == before


async def test_query_strings_and_encoded_paths_are_kept(proxy: RunningProxy) -> None:
    seen = await echo(proxy, path="/_sandbox/echo/a%2Fb?x=1&x=2&y=%20z")
    assert seen["raw_path"] == "/_sandbox/echo/a%2Fb?x=1&x=2&y=%20z"


async def _raw_request(
    proxy: RunningProxy, request_line: str, host: str = "proxy.test", user: bytes = b"alice"
) -> tuple[int, bytes]:
    port = int(proxy.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"{request_line}\r\nHost: {host}\r\n".encode()
        + b"X-User-Id: "
        + user
        + b"\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data


@pytest.fixture
async def decoy() -> Any:
    """A second server on loopback that must never be contacted through the proxy."""
    hits: list[str] = []

    async def record(request: web.Request) -> web.Response:
        hits.append(request.raw_path)
        return web.Response(text="decoy")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"127.0.0.1:{runner.addresses[0][1]}", hits
    await runner.cleanup()


@pytest.mark.parametrize(
    "template",
    [
        "//{decoy}/_sandbox/echo",
        "/@{decoy}/_sandbox/echo",
        "/%2F%2F{decoy}/_sandbox/echo",
        "/..//{decoy}/x",
        "/_sandbox/echo/..%2F..%2F{decoy}",
        "/\\{decoy}/x",
        "http://{decoy}/_sandbox/echo",
        "//user:pw@{decoy}/",
        "{decoy}/x",
    ],
)
async def test_no_target_or_host_header_reaches_another_server(
    proxy: RunningProxy, sim: GiniSimulator, decoy: Any, template: str
) -> None:
    address, hits = decoy
    before = len(sim.state.requests)
    status, data = await _raw_request(
        proxy, f"GET {template.format(decoy=address)} HTTP/1.1", host=address
    )
    assert hits == []
    assert b"decoy" not in data.split(b"\r\n\r\n", 1)[1]
    # Either refused in JSON, or relayed to the simulator, which recorded it.
    assert (status == 400 and b'"error"' in data) or len(sim.state.requests) == before + 1


async def test_absolute_form_target_is_refused(proxy: RunningProxy, sim: GiniSimulator) -> None:
    before = len(sim.state.requests)
    status, data = await _raw_request(proxy, "GET http://evil.example/_sandbox/echo HTTP/1.1")
    assert status == 400
    assert len(sim.state.requests) == before
    assert b'"error"' in data


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60))
@settings(max_examples=400, deadline=None)
def test_upstream_url_keeps_the_configured_origin(target: str) -> None:
    forwarder = _forwarder()
    try:
        url = forwarder.upstream_url(target)
    except BadRequest:
        assert not target.startswith("/") or has_dot_segment(target)
    else:
        assert (url.scheme, url.host, url.port) == ("https", "pay-api.gini.net", 443)
        assert url.raw_path == target.partition("?")[0].partition("#")[0]


def test_upstream_url_memo_is_bounded_and_answers_like_a_fresh_parse() -> None:
    forwarder = _forwarder()
    size = SIZES["upstream_urls"]
    targets = [f"/documents/{n}?page={n % 7}" for n in range(3 * size)]
    for target in targets:
        assert forwarder.upstream_url(target) == forwarder.upstream_url(target)
        assert str(forwarder.upstream_url(target)) == "https://pay-api.gini.net" + target
    assert len(forwarder._urls) == size
    assert targets[-1] in forwarder._urls
    assert targets[0] not in forwarder._urls
    with pytest.raises(BadRequest):  # refused targets are never remembered
        forwarder.upstream_url("http://evil.example/")
    assert "http://evil.example/" not in forwarder._urls


@functools.cache
def _forwarder() -> Forwarder:
    # Built once: Services builds the upstream TLS context, which loads the system CA bundle
    # (~20 ms a time), and upstream_url reads only configuration (and its own memo).
    config = build_config(
        {"client": {"id": CLIENT_ID, "secret": CLIENT_SECRET}, "identity": {"hmac_key": HMAC_KEY}},
        {},
        Path("."),
    )
    services = Services(config)
    return services.forwarder


async def test_a_stalled_download_is_cut_not_completed(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(upstream={"timeout_seconds": 0.4})
    url = proxy.url + "/_sandbox/download?bytes=4194304&delay_between_chunks=1.5"
    async with proxy.client.get(url, headers=USER) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


@pytest.mark.slow
async def test_slow_transfers_within_the_per_chunk_limit_complete(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(upstream={"timeout_seconds": 0.5})
    # Download: 16 blocks, 0.1 s apart: 1.6 s in all, but never 0.5 s without data.
    url = proxy.url + "/_sandbox/download?bytes=1048576&delay_between_chunks=0.1"
    async with proxy.client.get(url, headers=USER) as response:
        assert len(await response.read()) == 1048576

    # Upload: 1.5 s in all, longer than the timeout; the wait for the answer only starts after.
    async def body() -> Any:
        for _ in range(5):
            await asyncio.sleep(0.3)  # slow peer: a slow upload
            yield b"z" * 100_000

    seen = await echo(
        proxy, method="POST", data=body(), headers={**USER, "Content-Type": "application/pdf"}
    )
    assert seen["body_bytes"] == 500_000


async def test_a_slow_caller_is_not_an_upstream_timeout(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(upstream={"timeout_seconds": 0.3})
    async with proxy.client.get(
        proxy.url + "/_sandbox/download?bytes=8388608", headers=USER
    ) as response:
        received = 0
        async for chunk in response.content.iter_chunked(65536):
            received += len(chunk)
            if received < 4 * 65536:
                await asyncio.sleep(0.2)  # slow peer: the caller dawdles; Gini is done quickly
    assert received == 8388608
