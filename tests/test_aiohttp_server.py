"""The fence around aiohttp's server internals (`proxy/web/aiohttp_server.py`): each private
name the proxy relies on is checked here, against aiohttp itself and by behaviour, so a
release that changes one fails with a message naming it instead of breaking a listener
quietly. `pyproject.toml` bounds aiohttp to the releases these tests have passed on.

The last test checks the fence itself: no other module of `proxy/` names these internals.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web, web_response
from aiohttp.web_protocol import RequestHandler

from proxy.web import aiohttp_server

from .conftest import eventually

REQUEST = b"GET / HTTP/1.1\r\nHost: fence.test\r\n\r\n"
PROXY = Path(__file__).resolve().parent.parent / "proxy"


def changed(internal: str, what: str) -> str:
    return f"aiohttp internal {internal} changed: {what} (aiohttp {aiohttp.__version__})"


async def hello(_: web.BaseRequest) -> web.Response:
    return web.Response(text="hello")


class Live:
    """A bare aiohttp `Server` on loopback, its one connection's protocol, and a client socket."""

    def __init__(self, server: web.Server):
        self.server = server
        self.listener: asyncio.Server | None = None
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def start(self) -> RequestHandler:
        loop = asyncio.get_running_loop()
        self.listener = await loop.create_server(self.server, "127.0.0.1", 0)
        port = self.listener.sockets[0].getsockname()[1]
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        await eventually(lambda: settled(bool(self.server.connections)), within=5)
        (protocol,) = self.server.connections
        return protocol

    async def answer(self) -> bytes:
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head, re.I)[1])  # type: ignore[index]
        return head + await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        if self.listener is not None:
            self.listener.close()
        await self.server.shutdown(0.5)


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    connection = Live(web.Server(hello, keepalive_timeout=30))
    yield connection
    await connection.close()


async def settled(value: bool) -> bool:
    return value


async def waiting(protocol: RequestHandler) -> bool:
    await eventually(lambda: settled(protocol._waiter is not None), within=5)
    assert protocol._waiter is not None
    return not protocol._waiter.done()


async def test_request_handler_waiter_and_request_count(live: Live) -> None:
    for name in ("_waiter", "_request_count"):
        assert name in RequestHandler.__slots__, changed(f"RequestHandler.{name}", "gone")
    protocol = await live.start()
    assert await waiting(protocol), changed(
        "RequestHandler._waiter", "no pending future while waiting for a request"
    )
    assert protocol._request_count == 0, changed("RequestHandler._request_count", "not 0 at start")
    live.writer.write(REQUEST)
    assert (await live.answer()).endswith(b"hello")
    assert protocol._request_count == 1, changed(
        "RequestHandler._request_count", "not counting parsed heads"
    )
    assert await waiting(protocol), changed(
        "RequestHandler._waiter", "not set again while waiting for the next request"
    )


async def test_request_handler_keepalive_handle_is_armed_at_accept_and_after_answers(
    live: Live,
) -> None:
    assert "_keepalive_handle" in RequestHandler.__slots__, changed(
        "RequestHandler._keepalive_handle", "gone"
    )
    protocol = await live.start()
    assert isinstance(protocol._keepalive_handle, asyncio.TimerHandle), changed(
        "RequestHandler._keepalive_handle", "not armed at accept"
    )
    protocol._keepalive_handle.cancel()
    protocol._keepalive_handle = None
    live.writer.write(REQUEST)
    await live.answer()
    await waiting(protocol)
    assert isinstance(protocol._keepalive_handle, asyncio.TimerHandle), changed(
        "RequestHandler._keepalive_handle", "not armed again after an answer"
    )


async def test_request_handler_process_keepalive_is_the_idle_timer_callback() -> None:
    fired = asyncio.Event()

    class Counting(RequestHandler):
        def _process_keepalive(self) -> None:
            fired.set()
            super()._process_keepalive()

    class CountingServer(web.Server):
        def __call__(self) -> RequestHandler:
            return Counting(self, loop=self._loop, **self._kwargs)

    live = Live(CountingServer(hello, keepalive_timeout=0.2))
    try:
        await live.start()
        live.writer.write(REQUEST)
        await live.answer()
        try:
            async with asyncio.timeout(5):
                await fired.wait()
        except TimeoutError:
            pytest.fail(changed("RequestHandler._process_keepalive", "never called when idle"))
        async with asyncio.timeout(5):
            assert await live.reader.read() == b"", changed(
                "RequestHandler._process_keepalive", "does not close an idle connection"
            )
    finally:
        await live.close()


async def test_request_handler_force_close_makes_data_received_ignore_input(live: Live) -> None:
    assert "_force_close" in RequestHandler.__slots__, changed(
        "RequestHandler._force_close", "gone"
    )
    protocol = await live.start()
    await waiting(protocol)
    protocol._force_close = True
    protocol.data_received(REQUEST)
    assert protocol._request_count == 0, changed(
        "RequestHandler._force_close", "data_received parses input after it is set"
    )
    protocol.force_close()
    assert protocol._force_close is True, changed(
        "RequestHandler._force_close", "not set by force_close()"
    )


def test_request_handler_handle_error_signature() -> None:
    parameters = list(inspect.signature(RequestHandler.handle_error).parameters)
    assert parameters == ["self", "request", "status", "exc", "message"], changed(
        "RequestHandler.handle_error", f"parameters are now {parameters}"
    )


async def test_app_runner_make_server_and_server_request_handler() -> None:
    assert inspect.iscoroutinefunction(web.AppRunner._make_server), changed(
        "AppRunner._make_server", "no longer a coroutine function"
    )
    app = web.Application()
    app.router.add_get("/", hello)

    async def wrapped(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text="wrapped")

    class Runner(web.AppRunner):
        async def _make_server(self) -> web.Server:
            server = await super()._make_server()
            assert isinstance(server, web.Server), changed(
                "AppRunner._make_server", f"returns {type(server)}"
            )
            assert callable(server.request_handler), changed("Server.request_handler", "gone")
            server.request_handler = wrapped
            return server

    runner = Runner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{host}:{port}/") as response,
        ):
            assert await response.text() == "wrapped", changed(
                "Server.request_handler", "not read by each new connection"
            )
    finally:
        await runner.cleanup()


async def test_server_software_is_the_default_server_header(live: Live) -> None:
    saved = web_response.SERVER_SOFTWARE  # type: ignore[attr-defined]
    assert isinstance(saved, str), changed("web_response.SERVER_SOFTWARE", "gone")
    web_response.SERVER_SOFTWARE = "fence-test"  # type: ignore[attr-defined]
    try:
        await live.start()
        live.writer.write(REQUEST)
        assert b"\r\nServer: fence-test\r\n" in await live.answer(), changed(
            "web_response.SERVER_SOFTWARE", "no longer the default Server header"
        )
    finally:
        web_response.SERVER_SOFTWARE = saved  # type: ignore[attr-defined]


INTERNALS = re.compile(
    r"\._waiter|_request_count|_keepalive_handle|_force_close|_make_server|SERVER_SOFTWARE"
    r"|_process_keepalive"
)


def test_only_the_fence_names_aiohttp_server_internals() -> None:
    fence = Path(aiohttp_server.__file__).resolve()
    outside = sorted(
        str(path.relative_to(PROXY))
        for path in PROXY.rglob("*.py")
        if path.resolve() != fence and INTERNALS.search(path.read_text(encoding="utf-8"))
    )
    assert outside == []
