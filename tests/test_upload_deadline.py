"""`upstream.timeout_seconds` bounds Gini's whole answer head, also after a streamed upload.

The fake Gini is a raw socket server: it reads the request (head and body) and then sends its
answer head one byte at a time, never pausing as long as the timeout, so a timer that restarts
on every byte read (aiohttp's `sock_read`) never fires. Only a deadline on the whole head does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import USER, StartProxy

TIMEOUT = 1.0
BYTE_EVERY = 0.3  # well under TIMEOUT: each byte restarts a per-read timer
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n" + (
    b"X-Padding: " + b"p" * 100 + b"\r\n\r\n{}"
)  # about 40 s at BYTE_EVERY: a caller waiting for all of it would wait that long
UPLOAD = 100_000  # a PDF too large to be read into memory first: it is streamed


class TricklingGini:
    """Reads one request, then trickles `HEAD`; records how much body it read."""

    def __init__(self) -> None:
        self.body_bytes: list[int] = []
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            self.body_bytes.append(length)
            for byte in HEAD:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(BYTE_EVERY)  # slow peer: Gini trickles its head
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the proxy gave up on us, as it should
        finally:
            writer.close()

    async def stop(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def trickling() -> AsyncIterator[TricklingGini]:
    gini = TricklingGini()
    yield gini
    await gini.stop()


async def _pdf(pause: float = 0) -> AsyncIterator[bytes]:
    for _ in range(UPLOAD // 10_000):
        yield b"%" * 10_000
        await asyncio.sleep(pause)  # slow peer: a caller uploading slowly


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_trickling_answer_head_gets_504_within_the_timeout(
    start_proxy: StartProxy, trickling: TricklingGini, method: str
) -> None:
    pay_api = await trickling.start()
    proxy = await start_proxy(upstream={"pay_api": pay_api, "timeout_seconds": TIMEOUT})
    headers = {**USER, "Content-Type": "application/pdf"}
    if method == "POST":
        headers["Content-Length"] = str(UPLOAD)  # sized, as a document upload is
    started = time.monotonic()
    async with proxy.client.request(
        method,
        proxy.url + "/documents",
        headers=headers,
        data=_pdf() if method == "POST" else None,
        timeout=aiohttp.ClientTimeout(total=TIMEOUT + 3),  # without a deadline: about 40 s
    ) as response:
        elapsed = time.monotonic() - started
        assert response.status == 504
        assert (await response.json())["error"] == "upstream_timeout"
        assert response.headers["X-Request-Id"]
    # The timeout runs from the end of the upload; the rest is loopback and a loaded machine.
    assert elapsed < TIMEOUT + 2, elapsed
    assert trickling.body_bytes == [UPLOAD if method == "POST" else 0]


class EarlyGini(TricklingGini):
    """Answers as soon as the request head is in, then reads the upload, then sends the
    answer's body slowly: longer in all than the timeout, never a pause as long."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.partition(b":")[2])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\n"
            )
            await writer.drain()
            await reader.readexactly(length)
            self.body_bytes.append(length)
            for byte in b"complete":
                await asyncio.sleep(BYTE_EVERY)  # slow peer: Gini trickles its head
                writer.write(bytes([byte]))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.mark.slow
async def test_an_answer_that_starts_before_the_upload_ends_is_not_cut(
    start_proxy: StartProxy,
) -> None:
    """The deadline starts at the upload's end only while the head is still awaited: an answer
    already being relayed is timed per read, as before."""
    gini = EarlyGini()
    try:
        proxy = await start_proxy(
            upstream={"pay_api": await gini.start(), "timeout_seconds": TIMEOUT}
        )
        headers = {**USER, "Content-Type": "application/pdf", "Content-Length": str(UPLOAD)}
        started = time.monotonic()
        async with proxy.client.post(
            proxy.url + "/documents", headers=headers, data=_pdf(pause=0.05)
        ) as response:  # the upload goes on for half a second after Gini's answer started
            assert response.status == 200
            assert await response.read() == b"complete"
        assert time.monotonic() - started > TIMEOUT  # it did outlast the deadline
        assert gini.body_bytes == [UPLOAD]
    finally:
        await gini.stop()
