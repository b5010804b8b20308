"""`python -m proxy.sandbox --tls-cert --tls-key [--client-ca]`: an HTTPS simulator, optionally
requiring client certificates, with certificates made by `trustme` for each test."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme

from proxy.sandbox import GiniSimulator
from proxy.sandbox.tls import SandboxTlsError, server_context

from .conftest import CLIENT_ID, CLIENT_SECRET, USER, StartProxy
from .test_server import ProxyProcess


@dataclass
class Files:
    ca: trustme.CA
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def client_context(self, *, with_certificate: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if with_certificate:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


@pytest.fixture
def files(tmp_path: Path) -> Files:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("gini-auth-proxy-client", common_name="gini-auth-proxy-client")
    paths = Files(
        ca,
        tmp_path / "ca.pem",
        tmp_path / "server.crt",
        tmp_path / "server.key",
        tmp_path / "client.crt",
        tmp_path / "client.key",
    )
    ca.cert_pem.write_to_path(str(paths.ca_file))
    server.cert_chain_pems[0].write_to_path(str(paths.server_cert))
    server.private_key_pem.write_to_path(str(paths.server_key))
    client.cert_chain_pems[0].write_to_path(str(paths.client_cert))
    client.private_key_pem.write_to_path(str(paths.client_key))
    return paths


@pytest.fixture
async def sim(files: Files) -> AsyncIterator[GiniSimulator]:
    """Replaces conftest's plain-HTTP simulator: HTTPS, client certificates required."""
    context = server_context(files.server_cert, files.server_key, files.ca_file)
    async with GiniSimulator(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, ssl_context=context
    ) as simulator:
        yield simulator


async def test_the_proxy_with_its_client_certificate_forwards_flow_1(
    start_proxy: StartProxy, sim: GiniSimulator, files: Files
) -> None:
    tls = {
        "ca_file": str(files.ca_file),
        "client_cert_file": str(files.client_cert),
        "client_key_file": str(files.client_key),
    }
    proxy = await start_proxy(upstream={"tls": tls})
    assert sim.pay_api_url.startswith("https://")
    async with proxy.client.post(
        proxy.url + "/documents?filename=a.pdf",
        data=b"%PDF-1.4 hello",
        headers={**USER, "Content-Type": "application/pdf"},
    ) as answer:
        assert answer.status == 201, await answer.text()
    (upload,) = sim.state.requests_of("pay")
    assert upload.client_cert is not None


async def test_without_a_client_certificate_nothing_reaches_the_simulator(
    start_proxy: StartProxy, sim: GiniSimulator, files: Files
) -> None:
    proxy = await start_proxy(upstream={"tls": {"ca_file": str(files.ca_file)}})
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
        assert answer.status == 502
        assert (await answer.json())["error"] == "bad_gateway"
    assert sim.state.requests_of("pay") == []


def test_unusable_files_are_named(files: Files, tmp_path: Path) -> None:
    with pytest.raises(SandboxTlsError, match=r"--tls-cert .*server\.crt.*--tls-key .*client\.key"):
        server_context(files.server_cert, files.client_key)  # a key of another certificate
    missing = tmp_path / "nope.pem"
    with pytest.raises(SandboxTlsError, match=r"--client-ca .*nope\.pem"):
        server_context(files.server_cert, files.server_key, missing)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "x.pem"], "--tls-cert and --tls-key go together"),
        (["--client-ca", "ca.pem"], "--client-ca needs --tls-cert"),
        (["--tls-cert", "missing.crt", "--tls-key", "missing.key"], "cannot use --tls-cert"),
    ],
)
def test_the_command_line_refuses_incomplete_tls_options(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy.sandbox", *args],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.slow
async def test_python_m_proxy_sandbox_serves_https_and_requires_client_certificates(
    files: Files,
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.sandbox",
        "--tls-cert", str(files.server_cert), "--tls-key", str(files.server_key),
        "--client-ca", str(files.ca_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=dict(os.environ),
    )  # fmt: skip
    sandbox = ProxyProcess(process)
    try:
        output = (await sandbox.wait_for(rb"client certificates required")).decode()
        pay_api = re.search(r"Pay API: +(\S+)", output)
        assert pay_api is not None
        assert pay_api[1].startswith("https://127.0.0.1:")
        async with aiohttp.ClientSession() as client:
            async with client.get(
                pay_api[1] + "/_sandbox/echo", ssl=files.client_context(with_certificate=True)
            ) as answer:
                assert answer.status == 200
            with pytest.raises(aiohttp.ClientError):
                async with client.get(
                    pay_api[1] + "/_sandbox/echo",
                    ssl=files.client_context(with_certificate=False),
                ) as answer:
                    await answer.read()
    finally:
        process.terminate()
        await process.wait()
