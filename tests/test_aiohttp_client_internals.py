"""The private parts of aiohttp's client that `proxy.transport.aiohttp_client` relies on.

One test per internal; a failure names it, so an aiohttp upgrade that moves one says exactly
what to look at. Each is checked for what the proxy does with it, against a real connection
where there is one.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.client_proto import ResponseHandler

from proxy.transport.aiohttp_client import (
    InterimCheckingConnector,
    InterimCheckingHandler,
    connecting_over_tls,
    no_silent_resend,
)


def moved(internal: str, what: str) -> str:
    return f"aiohttp {aiohttp.__version__}: the internal {internal} changed: {what}"


class Recording(InterimCheckingHandler):
    """Records every interim status it is asked about; refuses 102."""

    asked: list[int] = []  # noqa: RUF012 - one list per test, reset by the fixture
    made = 0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        Recording.made += 1

    def refusal(self, status: int) -> BaseException | None:
        Recording.asked.append(status)
        return aiohttp.ClientError(f"refused {status}") if status == 102 else None


@pytest.fixture
async def raw_answers() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A loopback server answering each request with the next of `answers` (raw bytes)."""
    answers: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while answers:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answers.pop(0))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    Recording.asked, Recording.made = [], 0
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/", answers
    server.close()
    await server.wait_closed()


FINAL = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_tcp_connector_factory_and_loop_make_the_protocol() -> None:
    connector = aiohttp.TCPConnector()
    try:
        factory = getattr(connector, "_factory", None)
        assert isinstance(factory, functools.partial), moved(
            "TCPConnector._factory", f"a functools.partial was expected, found {factory!r}"
        )
        assert factory.func is ResponseHandler, moved(
            "TCPConnector._factory", f"it makes {factory.func!r}, not ResponseHandler"
        )
        assert factory.keywords == {"loop": asyncio.get_running_loop()}, moved(
            "TCPConnector._factory", f"its arguments are {factory.keywords!r}, not loop="
        )
        assert getattr(connector, "_loop", None) is asyncio.get_running_loop(), moved(
            "TCPConnector._loop", "it is no longer the connector's event loop"
        )
    finally:
        await connector.close()


async def test_connections_use_the_protocol_the_factory_makes(
    raw_answers: tuple[str, list[bytes]],
) -> None:
    url, answers = raw_answers
    answers.append(FINAL)
    async with (
        aiohttp.ClientSession(connector=InterimCheckingConnector(Recording)) as session,
        session.get(url) as response,
    ):
        assert await response.read() == b"ok"
    assert Recording.made == 1, moved(
        "TCPConnector._factory", "a connection was made without the protocol it makes"
    )


def test_response_handler_feed_data_takes_the_parsed_head_and_a_size() -> None:
    parameters = list(inspect.signature(ResponseHandler.feed_data).parameters)
    assert parameters == ["self", "data", "size"], moved(
        "ResponseHandler.feed_data", f"its parameters are {parameters}, not (self, data, size)"
    )


async def test_feed_data_sees_every_interim_head_and_set_exception_fails_the_exchange(
    raw_answers: tuple[str, list[bytes]],
) -> None:
    url, answers = raw_answers
    answers.append(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n" + FINAL)
    answers.append(b"HTTP/1.1 102 Processing\r\n\r\n" + FINAL)
    connector = InterimCheckingConnector(Recording, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(url) as response:
            assert await response.read() == b"ok"
        assert Recording.asked == [100, 103], moved(
            "ResponseHandler.feed_data", f"interim heads seen: {Recording.asked}, not [100, 103]"
        )
        with pytest.raises(aiohttp.ClientError, match="refused 102") as refused:
            async with session.get(url):
                pass
        assert not isinstance(refused.value, aiohttp.ClientResponseError), moved(
            "ResponseHandler.set_exception", "the refusal did not fail the exchange as raised"
        )


async def test_response_handler_exception_is_what_set_exception_stored() -> None:
    handler = ResponseHandler(loop=asyncio.get_running_loop())
    assert getattr(handler, "_exception", "missing") is None, moved(
        "ResponseHandler._exception", "a new protocol does not start with None there"
    )
    error = aiohttp.ClientError("x")
    handler.set_exception(error)
    assert getattr(handler, "_exception", None) is error, moved(
        "ResponseHandler._exception", "set_exception no longer stores the exception there"
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("scheme", ["https", "http"])
async def test_connector_errors_tell_whether_the_origin_was_https(scheme: str) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorError) as failed:
            await session.get(f"{scheme}://127.0.0.1:{_closed_port()}/")
    assert connecting_over_tls(failed.value) is (scheme == "https"), moved(
        "ClientConnectorError._conn_key.is_ssl", f"it no longer says whether {scheme} is TLS"
    )


async def test_client_session_retry_connection_is_the_silent_resend_switch() -> None:
    """`no_silent_resend` sets `ClientSession._retry_connection`, which aiohttp reads before
    resending a request whose connection dropped."""
    async with aiohttp.ClientSession() as session:
        assert getattr(session, "_retry_connection", None) is True, (
            f"aiohttp internal ClientSession._retry_connection changed ({aiohttp.__version__})"
        )
        no_silent_resend(session)
        assert session._retry_connection is False
    source = inspect.getsource(aiohttp.ClientSession._request)
    assert "self._retry_connection" in source, (
        "aiohttp internal ClientSession._retry_connection is no longer read by _request "
        f"({aiohttp.__version__})"
    )
