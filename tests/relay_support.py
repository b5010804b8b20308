"""A TCP relay between a test's client and a server, which the test can cut and restore.

`blackhole()` keeps every socket open but forwards nothing and answers nothing (a partition, a
host behind a firewall that drops packets); `refuse()` closes the listener and resets open
connections (a stopped server); `restore()` heals either.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class Relay:
    """A TCP relay from a loopback port to `target`, which a test can cut and restore."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def blackhole(self) -> None:
        """Accept, but never answer; hold every byte instead of forwarding it."""
        self._flowing.clear()

    async def refuse(self) -> None:
        """Connection refused for new connections, a reset for open ones."""
        self._flowing.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()

    async def restore(self) -> None:
        if self._server is None:
            await self.start()
        self._flowing.set()

    async def close(self) -> None:
        # Handlers are ended by closing their sockets, not cancelled: asyncio's stream server
        # logs an error for every handler task that ends cancelled.
        self._closing = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._flowing.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            await self._flowing.wait()  # blackholed: the handshake completed, nothing answers
            if self._closing or writer.is_closing():
                return
            up_reader, upstream = await asyncio.open_connection(*self.target)
            self._writers.add(upstream)
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for end in (writer, upstream):
                if end is not None:
                    self._writers.discard(end)
                    end.transport.abort()
            self._tasks.discard(task)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            await self._flowing.wait()  # blackholed: the bytes are held, not forwarded
            if sink.is_closing():
                return
            sink.write(data)
            await sink.drain()
        if not sink.is_closing():
            sink.write_eof()


def through(dsn: str, port: int, password: str | None = None) -> str:
    """`dsn` pointed at the relay on `port` (and optionally given a password)."""
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    credentials = f"{user}:{password}" if password else user
    return urlunsplit(parts._replace(netloc=f"{credentials}@127.0.0.1:{port}"))
