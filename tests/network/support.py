"""Test support for production networks: a private CA, an HTTPS Gini simulator, a CONNECT proxy,
and flows 1-4 driven through the proxy against them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import trustme

from proxy.sandbox import GiniSimulator

from ..conftest import CLIENT_ID, CLIENT_SECRET, USER, RunningProxy

PROXY_USER = "svc-gini"
PROXY_PASSWORD = "egress-pass-5d1e"


@dataclass
class Pki:
    """A private CA made for the test, the files the proxy reads, and a server context."""

    ca: trustme.CA
    ca_file: Path
    client_cert_file: Path
    client_key_file: Path

    def server_context(
        self, *, require_client_cert: bool = False, hostname: str = "127.0.0.1"
    ) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(hostname).configure_cert(context)
        if require_client_cert:
            self.ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
            # asyncio servers send no TLS 1.3 alert after the handshake, so a refused client
            # would only see a clean close; in TLS 1.2 the refusal is part of the handshake.
            context.maximum_version = ssl.TLSVersion.TLSv1_2
        return context

    def client_context(self) -> ssl.SSLContext:
        """For tests that talk to the simulator directly (as a device would)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


def make_pki(folder: Path) -> Pki:
    ca = trustme.CA()
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = ca.issue_cert("gini-auth-proxy-client", common_name="gini-auth-proxy-client")
    cert_file, key_file = folder / "tls.crt", folder / "tls.key"
    client.cert_chain_pems[0].write_to_path(str(cert_file))
    client.private_key_pem.write_to_path(str(key_file))
    return Pki(ca, ca_file, cert_file, key_file)


def tls_simulator(context: ssl.SSLContext) -> GiniSimulator:
    return GiniSimulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, ssl_context=context)


async def run_flows(proxy: RunningProxy, sim: GiniSimulator, device: ssl.SSLContext) -> int:
    """Flows 1-4 through the proxy, checked end to end; returns how many requests it sent."""
    client, url = proxy.client, proxy.url
    public = proxy.config.public_url
    async with client.post(
        url + "/documents?filename=a.pdf",
        data=b"%PDF-1.4 hello",
        headers={**USER, "Content-Type": "application/pdf"},
    ) as response:
        assert response.status == 201, await response.text()
        location = response.headers["Location"]
    assert sim.pay_api_url.startswith("https://")
    assert location.startswith(public + "/documents/")  # rewritten from https://
    async with client.get(url + location[len(public) :], headers=USER) as response:
        assert response.status == 200
        document = await response.json(content_type=None)
    assert all(link.startswith(public) for link in document["_links"].values())
    async with client.post(url + "/_proxy/tokens/derived", headers=USER) as response:
        assert response.status == 200, await response.text()
        derived = (await response.json())["access_token"]
    # Flow 3: the device uses the token straight at Gini.
    async with (
        aiohttp.ClientSession() as device_session,
        device_session.get(
            sim.pay_api_url + "/documents",
            headers={"Authorization": f"Bearer {derived}"},
            ssl=device,
        ) as response,
    ):
        listing = await response.json(content_type=None)
    assert [d["id"] for d in listing["documents"]] == [document["id"]]
    async with client.post(url + "/_proxy/tokens/anonymous", headers=USER) as response:
        assert response.status == 200, await response.text()
        assert (await response.json())["access_token"]
    assert sim.state.users_created == 1
    return 4


@dataclass
class ConnectProxy:
    """A small authenticating forward proxy, Basic Proxy-Authorization: CONNECT tunnels, and
    plain-HTTP requests in absolute form (one per connection)."""

    username: str = PROXY_USER
    password: str = PROXY_PASSWORD
    tunnels: int = 0
    refused: int = 0
    targets: list[str] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)  # plain-HTTP requests: METHOD URL
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

    def _expected(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            if headers.get("proxy-authorization") != self._expected():
                self.refused += 1
                writer.write(
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="egress"\r\nContent-Length: 0\r\n\r\n'
                )
                await writer.drain()
                return
            if method != "CONNECT" and target.startswith("http://"):
                await self._forward(reader, writer, f"{method} {target}", lines[1:])
                return
            if method != "CONNECT":
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            host, _, port = target.rpartition(":")
            upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
            self.tunnels += 1
            self.targets.append(target)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _forward(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: str,
        header_lines: list[str],
    ) -> None:
        """Send a plain-HTTP request on to its origin, without the proxy's own headers."""
        self.forwarded.append(request)
        method, target = request.split(" ", 1)
        url = urlsplit(target)
        upstream_reader, upstream_writer = await asyncio.open_connection(url.hostname, url.port)
        hop = ("proxy-authorization", "proxy-connection", "connection", "keep-alive")
        kept = [line for line in header_lines if line.partition(":")[0].strip().lower() not in hop]
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        head = [f"{method} {path} HTTP/1.1", *[line for line in kept if line], "Connection: close"]
        upstream_writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        body = asyncio.create_task(_pipe(reader, upstream_writer))
        await _pipe(upstream_reader, writer)  # Gini closes after this one answer
        body.cancel()
        await asyncio.gather(body, return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()
