"""Hostile callers on the proxy listener: `client_timeouts` and `max_connections`.

Everything here uses raw sockets against a real listener built by `make_runners` (the
`start_proxy` fixture), because the behaviour under test lives below aiohttp's request
objects: in the connection protocol and the transport's flow control.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import resource
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import build_config
from proxy.config.reader import ConfigError
from proxy.web.connections import DESCRIPTOR_RESERVE, descriptor_budget

from .conftest import USER, RunningProxy, StartProxy, eventually

FAST = {"header_seconds": 1, "idle_seconds": 1, "body_seconds": 1, "send_seconds": 1}
ROOT = Path(__file__).resolve().parent.parent
REQUEST = b"GET /_sandbox/echo HTTP/1.1\r\nHost: proxy.test\r\nX-User-Id: alice@example.com\r\n\r\n"


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*host_port(url))


async def read_until_closed(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the proxy sends until it closes the connection (a reset counts as closed)."""
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    except ConnectionResetError:
        pass
    return data


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return status, headers, body


def assert_contract_error(raw: bytes, status: int, code: str) -> None:
    got, headers, body = parse_answer(raw)
    assert got == status, raw[:200]
    error = json.loads(body)
    assert error["error"] == code
    assert error["requestId"] == headers["x-request-id"]
    assert headers["connection"] == "close"


def timeouts_counted(proxy: RunningProxy, reason: str) -> float:
    value = proxy.metrics.registry.get_sample_value(
        "gini_proxy_client_timeouts_total", {"reason": reason}
    )
    return value or 0.0


async def get_ok(proxy: RunningProxy) -> None:
    async with proxy.client.get(proxy.url + "/_sandbox/echo", headers=USER) as response:
        assert response.status == 200
        await response.read()


# --- a raw upstream that shows whether the proxy let go of its connection ----------------------


class RawUpstream:
    """A loopback HTTP/1.1 server for one behaviour: read uploads without answering ("sink"),
    or answer a GET with an endless body ("flood"). Records every connection's close."""

    def __init__(self, mode: str):
        self.mode = mode
        self.opened = 0
        self.closed = 0
        self.received = 0
        self.closed_event = asyncio.Event()
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> RawUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.opened += 1
        try:
            if self.mode == "sink":
                while chunk := await reader.read(65536):
                    self.received += len(chunk)
            else:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n")
                writer.write(b"Content-Length: 1073741824\r\n\r\n")
                block = b"x" * 65536
                for _ in range(16384):  # bounded: 1 GiB, far more than any buffer holds
                    writer.write(block)
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed += 1
            self.closed_event.set()
            writer.close()

    async def wait_closed(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while self.closed < self.opened or not self.opened:
                self.closed_event.clear()
                await self.closed_event.wait()


@pytest.fixture
async def sink() -> AsyncIterator[RawUpstream]:
    async with RawUpstream("sink") as upstream:
        yield upstream


@pytest.fixture
async def flood() -> AsyncIterator[RawUpstream]:
    async with RawUpstream("flood") as upstream:
        yield upstream


# --- header_seconds and idle_seconds ---------------------------------------------------------


@pytest.mark.slow
async def test_idle_and_slowloris_connections_are_cut_while_a_caller_is_served(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(client_timeouts=FAST)
    loop = asyncio.get_running_loop()
    silent = [await connect(proxy.url) for _ in range(100)]  # connect, then nothing
    kept_alive = [await connect(proxy.url) for _ in range(100)]  # one request, then idle
    for _, writer in kept_alive:
        writer.write(REQUEST)
    for reader, _ in kept_alive:
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
    slow = [await connect(proxy.url) for _ in range(50)]
    started = loop.time()

    async def trickle() -> None:  # one byte of a head every 0.2 s, never finishing it
        for n in range(40):
            for _, writer in slow:
                if not writer.is_closing():
                    writer.write(REQUEST[n : n + 1])
            await asyncio.sleep(0.2)  # slow peer: a slowloris caller

    async def normal_caller() -> int:
        served = 0
        while loop.time() - started < 3:
            await get_ok(proxy)
            served += 1
            await asyncio.sleep(0.05)  # paces: a steady caller among the slow ones
        return served

    trickling = asyncio.create_task(trickle())
    caller = asyncio.create_task(normal_caller())
    answers = await asyncio.gather(
        *(read_until_closed(reader, 5) for reader, _ in silent + kept_alive + slow)
    )
    all_closed = loop.time() - started
    trickling.cancel()
    assert await caller >= 10
    assert all_closed < 3.5, f"took {all_closed:.1f} s"
    for raw in answers[:100] + answers[200:]:  # no head completed in time: 408
        assert_contract_error(raw, 408, "request_timeout")
    for raw in answers[100:200]:  # idle after an answer (its body left): closed, no 408
        assert b"HTTP/1.1" not in raw, raw
    assert timeouts_counted(proxy, "header") >= 150
    assert timeouts_counted(proxy, "idle") >= 100
    for _, writer in silent + kept_alive + slow:
        writer.close()
    print(f"\n250 idle/slowloris connections closed after {all_closed:.2f} s")


@pytest.mark.slow
async def test_a_head_is_timed_from_its_first_byte_on_a_kept_alive_connection(
    start_proxy: StartProxy,
) -> None:
    # idle is long here: only header_seconds can cut the trickled second head.
    proxy = await start_proxy(client_timeouts={"header_seconds": 1, "idle_seconds": 30})
    reader, writer = await connect(proxy.url)
    writer.write(REQUEST)
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    # time passes: idle longer than header_seconds must not count as a head timeout
    await asyncio.sleep(1.2)
    assert not reader.at_eof()
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer.write(b"GET /_sandbox/echo HTTP/1.1\r\n")
    body_left = await read_until_closed(reader, 4)
    assert 0.8 < loop.time() - started < 2.5
    assert body_left.count(b"HTTP/1.1 408") == 1
    writer.close()


@pytest.mark.slow
async def test_a_prompt_caller_is_not_cut_by_the_head_timer(start_proxy: StartProxy) -> None:
    # Guards the lazy head timer: an old arming must not fire on a later, complete head.
    proxy = await start_proxy(client_timeouts={"header_seconds": 0.5, "idle_seconds": 30})
    reader, writer = await connect(proxy.url)
    for _ in range(8):  # requests spread over more than two head timer periods
        writer.write(REQUEST)
        status, headers, _ = parse_answer(await reader.readuntil(b"\r\n\r\n"))
        assert status == 200
        await reader.readexactly(int(headers["content-length"]))
        await asyncio.sleep(0.2)  # paces: requests spread over several timer periods
    assert timeouts_counted(proxy, "header") == 0
    writer.close()


# --- body_seconds -----------------------------------------------------------------------------


async def stalled_upload(url: str, length: int, sent: int, content_type: str) -> bytes:
    reader, writer = await connect(url)
    writer.write(
        f"POST /documents HTTP/1.1\r\nHost: proxy.test\r\nX-User-Id: alice@example.com\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n".encode()
        + b"a" * sent
    )
    try:
        return await read_until_closed(reader, 5)
    finally:
        writer.close()


@pytest.mark.slow
async def test_a_stalled_streamed_upload_is_cut_and_gini_released(
    start_proxy: StartProxy, sink: RawUpstream
) -> None:
    proxy = await start_proxy(client_timeouts=FAST, upstream={"pay_api": sink.url})
    loop = asyncio.get_running_loop()
    started = loop.time()
    raw = await stalled_upload(proxy.url, 10_000_000, 300_000, "application/pdf")
    assert_contract_error(raw, 408, "request_timeout")
    assert sink.opened == 1
    assert sink.received > 200_000  # the upload was streaming upstream when it stalled
    await sink.wait_closed(2)  # the Gini connection is closed, not kept for the next request
    assert loop.time() - started < 4
    assert timeouts_counted(proxy, "body") == 1


@pytest.mark.slow
@pytest.mark.parametrize("content_type", ["application/json", "application/octet-stream"])
async def test_a_stalled_small_body_is_cut_before_gini_is_called(
    start_proxy: StartProxy, sink: RawUpstream, content_type: str
) -> None:
    proxy = await start_proxy(client_timeouts=FAST, upstream={"pay_api": sink.url})
    raw = await stalled_upload(proxy.url, 2000, 10, content_type)
    assert_contract_error(raw, 408, "request_timeout")
    assert sink.opened == 0
    assert timeouts_counted(proxy, "body") == 1


@pytest.mark.slow
async def test_a_slow_but_steady_upload_is_not_cut(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(client_timeouts=FAST)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(6):  # 1.8 s in all, but never a pause of body_seconds
            yield b"p" * 20_000
            await asyncio.sleep(0.3)  # slow peer: a slow but steady upload

    async with proxy.client.post(
        proxy.url + "/_sandbox/echo",
        data=body(),
        headers={**USER, "Content-Type": "application/octet-stream"},
    ) as response:
        assert response.status == 200
        assert (await response.json())["body_bytes"] == 120_000
    assert timeouts_counted(proxy, "body") == 0


# --- send_seconds -----------------------------------------------------------------------------


async def test_a_caller_that_never_reads_is_cut_and_gini_released(
    start_proxy: StartProxy, flood: RawUpstream
) -> None:
    proxy = await start_proxy(client_timeouts=FAST, upstream={"pay_api": flood.url})
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills up at once
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, host_port(proxy.url))
    await loop.sock_sendall(sock, REQUEST.replace(b"/_sandbox/echo", b"/documents/big"))
    started = loop.time()
    try:
        await flood.wait_closed(5)  # never reading: the proxy gives up on the caller and Gini
        assert loop.time() - started < 4
        assert timeouts_counted(proxy, "send") == 1
        assert await drained_to_the_cut(sock)
    finally:
        sock.close()
    async with proxy.client.get(proxy.url + "/_proxy/nothing") as response:
        assert response.status == 404  # the listener itself is fine (answered by the proxy)


async def drained_to_the_cut(sock: socket.socket) -> bool:
    """Read what the proxy buffered before cutting the connection; True once it is closed."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(2):
            while await loop.sock_recv(sock, 1 << 20):
                pass
    except ConnectionResetError:
        return True
    return True  # an orderly end of stream: closed as well (a timeout raises instead)


# --- max_connections -------------------------------------------------------------------------


async def test_connections_past_the_limit_are_refused_and_logged_once(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="proxy.connections")
    proxy = await start_proxy(max_connections=20)
    held = [await connect(proxy.url) for _ in range(20)]
    open_connections = "gini_proxy_open_connections"
    await eventually(lambda: proxy.metrics.registry.get_sample_value(open_connections) == 20)
    extra = [await connect(proxy.url) for _ in range(30)]
    answers = await asyncio.gather(*(read_until_closed(reader, 2) for reader, _ in extra))
    for raw in answers:
        assert_contract_error(raw, 503, "too_many_connections")
    registry = proxy.metrics.registry
    assert registry.get_sample_value("gini_proxy_connections_refused_total") == 30
    assert registry.get_sample_value("gini_proxy_open_connections") == 20
    for reader, _ in held:  # the admitted ones still work
        assert not reader.at_eof()
    reader, writer = held[0]
    writer.write(REQUEST)
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    for _, writer in held + extra:
        writer.close()
    await eventually(lambda: not registry.get_sample_value("gini_proxy_open_connections"))
    await get_ok(proxy)  # a normal caller is served again
    messages = [r.getMessage() for r in caplog.records if r.name == "proxy.connections"]
    limit_logs = [m for m in messages if "max_connections" in m]
    assert limit_logs == [
        "max_connections reached: refusing new connections",
        "open connections below max_connections again",
    ]
    # Once for the whole burst (the store's own startup warning about a fresh store aside).
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([r for r in warnings if r.name != "proxy.store"]) == 1


# --- config -----------------------------------------------------------------------------------

MINIMAL: dict[str, Any] = {
    "client": {"id": "my-client", "secret": "client-secret-value-4f1c2e"},
    "identity": {"hmac_key": "hmac-key-0123456789abcdef0123456789abcdef"},
}


def test_the_defaults(tmp_path: Path) -> None:
    config = build_config(MINIMAL, {}, tmp_path)
    timeouts = config.client_timeouts
    assert (timeouts.header_seconds, timeouts.idle_seconds) == (10, 60)
    assert (timeouts.body_seconds, timeouts.send_seconds) == (30, 30)
    assert config.max_connections == 1000


def test_values_and_environment_variables(tmp_path: Path) -> None:
    data = {
        **MINIMAL,
        "client_timeouts": {"header_seconds": 2.5, "idle_seconds": "${IDLE}"},
        "max_connections": "${MAX}",
    }
    config = build_config(data, {"IDLE": "5", "MAX": "64"}, tmp_path)
    assert config.client_timeouts.header_seconds == 2.5
    assert config.client_timeouts.idle_seconds == 5
    assert config.client_timeouts.body_seconds == 30
    assert config.max_connections == 64


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = {
        **MINIMAL,
        "client_timeouts": {
            "header_seconds": 0,
            "idle_seconds": -1,
            "body_seconds": "soon",
            "send_seconds": True,
            "read_seconds": 5,
        },
        "max_connections": 0,
    }
    with pytest.raises(ConfigError) as caught:
        build_config(data, {}, tmp_path)
    paths = sorted(p.partition(":")[0] for p in caught.value.problems)
    assert paths == [
        "client_timeouts.body_seconds",
        "client_timeouts.header_seconds",
        "client_timeouts.idle_seconds",
        "client_timeouts.read_seconds",
        "client_timeouts.send_seconds",
        "max_connections",
    ]


def test_client_timeouts_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config({**MINIMAL, "client_timeouts": 10}, {}, tmp_path)
    assert caught.value.problems == ["client_timeouts: must be a mapping"]


def test_the_descriptor_limit_is_raised_or_the_shortfall_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    small = build_config({**MINIMAL, "max_connections": 10}, {}, tmp_path)
    limits = descriptor_budget(small)  # enough already: left as it is
    assert limits.max_connections == 10
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == soft
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on this machine: nothing can fall short")
    caplog.set_level(logging.INFO, logger="proxy.connections")
    try:
        huge = build_config({**MINIMAL, "max_connections": hard}, {}, tmp_path)
        limits = descriptor_budget(huge)  # raised as far as allowed, still short
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # What is served fits: two descriptors per caller, the admin share and the reserve.
    assert limits.max_connections == (hard - DESCRIPTOR_RESERVE - 64) // 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "max_connections" in warnings[0].getMessage()


def test_the_example_config_shows_the_defaults(tmp_path: Path) -> None:
    example = yaml.safe_load((ROOT / "config.example.yaml").read_text(encoding="utf-8"))
    defaults = build_config(MINIMAL, {}, tmp_path)
    assert example["client_timeouts"] == dataclasses.asdict(defaults.client_timeouts)
    assert example["max_connections"] == defaults.max_connections
    assert example["admin_max_connections"] == defaults.admin_max_connections
    assert example["max_header_bytes"] == defaults.max_header_bytes
