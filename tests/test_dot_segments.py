"""Paths with `.` or `..` segments, in any spelling, get 400 and never reach Gini."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from proxy.forwarding.target import has_dot_segment

from .conftest import USER, StartProxy


def reference(raw_target: str) -> bool:
    """The rule spelled out: split the path on every separator spelling, cut `;params`, decode
    `%2e`, and look for a segment that is `.` or `..`."""
    path = raw_target.partition("?")[0]
    path = re.sub(r"%2f|%5c|\\", "/", path, flags=re.IGNORECASE)
    for segment in path.split("/"):
        name = re.sub(r"%2e", ".", segment.partition(";")[0], flags=re.IGNORECASE)
        if name in (".", ".."):
            return True
    return False


_pieces = st.sampled_from(
    [
        *(".", "..", "...", "%2e", "%2E", ".%2e", "%2E.", "%2e%2E", "%2", "%25", "/", "\\"),
        *("%2f", "%2F", "%5c", "%5C", ";", ";x", "?", "a", "b.c", ".d", "e.", "%41", "%"),
    ]
)
_targets = st.lists(_pieces, max_size=12).map(lambda parts: "/" + "".join(parts))


@given(_targets)
def test_property_dot_segments_are_found_in_any_spelling(target: str) -> None:
    assert has_dot_segment(target) == reference(target)


@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40))
def test_property_any_target_agrees_with_the_rule(tail: str) -> None:
    assert has_dot_segment("/" + tail) == reference("/" + tail)


@given(
    st.lists(st.sampled_from(["a", "docs", "x.y", "%2ex", "..a"]), max_size=4),
    st.sampled_from([".", "..", "%2e", "%2E%2e", ".%2E", "%2e."]),
    st.sampled_from(["", "/", "/rest", "?q=1", ";p", "%2Frest", "\\rest"]),
)
def test_property_an_inserted_dot_segment_is_always_found(
    before: list[str], dots: str, after: str
) -> None:
    target = "/" + "/".join([*before, dots]) + after
    assert has_dot_segment(target)
    assert not has_dot_segment("/" + "/".join([*before, "dots"]) + after)


def test_dots_in_names_and_queries_are_fine() -> None:
    for target in ["/documents/a.pdf", "/x/...", "/x/.hidden", "/x/a..b", "/x?next=/../y"]:
        assert not has_dot_segment(target), target


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback Pay API under the path prefix `/pay` that records each raw target."""
    seen: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response({"path": request.raw_path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/pay", seen
    await runner.cleanup()


async def raw_get(port: int, target: str) -> tuple[int, bytes, bytes]:
    """One request as written, byte for byte: aiohttp's client would normalise the path."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    user = USER["X-User-Id"]
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: proxy.test\r\nX-User-Id: {user}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


@pytest.mark.parametrize(
    "target",
    [
        "/../x",
        "/%2e%2e/x",
        "/%2E%2E/x",
        "/.%2e/x",
        "/%2e./x",
        "/documents/../../x",
        "/documents/./x",
        "/documents/%2e",
        "/documents/..",
        "/documents/..?a=b",
        "/documents/..;x/y",
        "/documents%2f..%2fx",
        "/documents\\..\\x",
    ],
)
async def test_dot_segments_get_400_and_are_never_forwarded(
    start_proxy: StartProxy, recorder: tuple[str, list[str]], target: str
) -> None:
    pay_api, seen = recorder
    proxy = await start_proxy(upstream={"pay_api": pay_api})
    port = int(proxy.url.rsplit(":", 1)[1])
    status, head, body = await raw_get(port, target)
    assert status == 400, head
    error = json.loads(body)
    assert error["error"] == "bad_request"
    assert "segment" in error["message"]
    assert head.lower().count(b"\r\nx-request-id: " + error["requestId"].encode()) == 1
    # An ordinary path on the same proxy still goes through, under the prefix.
    status, _, body = await raw_get(port, "/documents/a.pdf?x=..")
    assert status == 200
    assert seen == ["/pay/documents/a.pdf?x=.."]
