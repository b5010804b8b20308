"""A missing or refused client certificate is named as such (`tls_client_certificate`), under
TLS 1.3 (where the refusal comes after the handshake) as under TLS 1.2, in `serve` and `doctor`.

Two kinds of strict Gini: the simulator on an asyncio TLS server, which closes without a word
when it refuses a certificate, and a blocking OpenSSL server, which sends the alert first (as
nginx does), though the client often loses it to the TCP reset that follows.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
import trustme

from proxy.commands.doctor import Doctor
from proxy.config import build_config
from proxy.transport.client_cert import ClientCertificateWatch
from proxy.transport.failures import classify
from proxy.transport.tls import build_context

from ..conftest import USER, StartProxy, config_data, merge
from .support import Pki, tls_simulator

VERSIONS = {"1.3": ssl.TLSVersion.TLSv1_3, "1.2": ssl.TLSVersion.TLSv1_2}
Certificate = Literal["none", "untrusted"]


def strict_context(pki: Pki, version: str) -> ssl.SSLContext:
    """A server that requires a client certificate from `pki`'s CA, speaking only `version`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.ca.issue_cert("127.0.0.1").configure_cert(context)
    pki.ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = context.maximum_version = VERSIONS[version]
    return context


class AlertingGini:
    """A blocking OpenSSL server in a thread: one short JSON answer per connection."""

    def __init__(self, context: ssl.SSLContext):
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            with sock:
                sock.settimeout(5)
                try:
                    with self.context.wrap_socket(sock, server_side=True) as tls:
                        tls.recv(65536)
                        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                except (ssl.SSLError, OSError):
                    self.refused += 1

    def __enter__(self) -> AlertingGini:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()


@contextlib.asynccontextmanager
async def strict_gini(pki: Pki, version: str, kind: str) -> AsyncIterator[str]:
    """The URL of a strict Gini of `kind` ("simulator" or "alerting")."""
    if kind == "simulator":
        async with tls_simulator(strict_context(pki, version)) as sim:
            yield sim.pay_api_url
    else:
        with AlertingGini(strict_context(pki, version)) as server:
            yield server.url


def client_pair(certificate: Certificate, tmp_path: Path) -> dict[str, str]:
    if certificate == "none":
        return {}
    other = trustme.CA().issue_cert("gini-auth-proxy-client")  # a CA Gini does not trust
    cert_file, key_file = tmp_path / "other.crt", tmp_path / "other.key"
    other.cert_chain_pems[0].write_to_path(str(cert_file))
    other.private_key_pem.write_to_path(str(key_file))
    return {"client_cert_file": str(cert_file), "client_key_file": str(key_file)}


def upstream(pki: Pki, url: str, pair: dict[str, str]) -> dict[str, Any]:
    tls = {"ca_file": str(pki.ca_file), **pair}
    return {"pay_api": url, "user_center": url, "tls": tls}


CASES = [
    pytest.param(version, certificate, kind, id=f"tls{version}-{certificate}-{kind}")
    for version in VERSIONS
    for certificate in ("none", "untrusted")
    for kind in ("simulator", "alerting")
]


@pytest.mark.parametrize(("version", "certificate", "kind"), CASES)
async def test_serve_names_the_client_certificate(
    start_proxy: StartProxy,
    pki: Pki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    version: str,
    certificate: Certificate,
    kind: str,
) -> None:
    async with strict_gini(pki, version, kind) as url:
        proxy = await start_proxy(upstream=upstream(pki, url, client_pair(certificate, tmp_path)))
        async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
            body = await response.json()
    assert response.status == 502  # the contract error of every TLS failure
    assert body["error"] == "bad_gateway"
    assert body["requestId"] == response.headers["X-Request-Id"]
    errors = proxy.metrics.registry.get_sample_value(
        "gini_proxy_upstream_errors_total",
        {"upstream": "pay_api", "reason": "tls_client_certificate"},
    )
    assert errors == 1
    (record,) = [r for r in caplog.records if r.name == "proxy.upstream"]
    message = record.getMessage()
    assert record.__dict__["reason"] == "tls_client_certificate"
    expected = "got none" if certificate == "none" else "refused the client certificate"
    assert expected in message, message
    assert "upstream.tls.client_cert_file" in message
    assert record.exc_info is None


@pytest.mark.parametrize(("version", "certificate", "kind"), CASES)
async def test_doctor_names_the_client_certificate(
    pki: Pki, tmp_path: Path, version: str, certificate: Certificate, kind: str
) -> None:
    lines: list[str] = []
    async with strict_gini(pki, version, kind) as url:
        overrides = {"upstream": upstream(pki, url, client_pair(certificate, tmp_path))}
        data = merge(config_data_without_sim(tmp_path), overrides)
        ok = await Doctor(build_config(data, {}, tmp_path), lines.append).run()
    assert not ok
    (tls,) = [line for line in lines if "tls pay_api" in line]
    assert tls.startswith("[FAIL]"), lines
    assert "tls_client_certificate" in tls
    assert ("got none" if certificate == "none" else "refused the client certificate") in tls
    assert tls.rstrip().endswith("."), tls  # a whole sentence


@pytest.mark.parametrize("version", VERSIONS)
async def test_an_accepted_client_certificate_passes(
    pki: Pki, tmp_path: Path, version: str
) -> None:
    lines: list[str] = []
    pair = {
        "client_cert_file": str(pki.client_cert_file),
        "client_key_file": str(pki.client_key_file),
    }
    async with tls_simulator(strict_context(pki, version)) as sim:
        data = merge(
            config_data(sim, tmp_path), {"upstream": {"tls": {"ca_file": str(pki.ca_file), **pair}}}
        )
        ok = await Doctor(build_config(data, {}, tmp_path), lines.append).run()
    assert ok, lines
    assert f"TLSv{version}" in next(line for line in lines if "tls pay_api" in line)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("strict", [True, False], ids=["mtls", "no-mtls"])
async def test_serve_retires_the_watch_after_the_first_good_handshake(
    start_proxy: StartProxy, pki: Pki, version: str, strict: bool
) -> None:
    context = strict_context(pki, version)
    if not strict:
        context.verify_mode = ssl.CERT_NONE  # Gini asks for no certificate
    pair = {
        "client_cert_file": str(pki.client_cert_file),
        "client_key_file": str(pki.client_key_file),
    }
    async with tls_simulator(context) as sim:
        proxy = await start_proxy(upstream=upstream(pki, sim.pay_api_url, pair))
        for _ in range(3):
            async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
                assert response.status == 200
    tls = proxy.services.upstream.tls.get()
    assert tls.client_certificate_watch.retired  # type: ignore[attr-defined]
    assert tls._msg_callback is None  # type: ignore[attr-defined]  # no cost per record


def config_data_without_sim(tmp_path: Path) -> dict[str, Any]:
    class Placeholder:  # config_data only reads the two URLs, replaced by the test
        pay_api_url = user_center_url = "https://127.0.0.1:1"

    return config_data(Placeholder(), tmp_path)  # type: ignore[arg-type]


# -- the watch, message by message ------------------------------------------------------------

TLS12, TLS13 = 0x0303, 0x0304


@pytest.fixture
def clock() -> list[float]:
    return [100.0]


def asked(watch: ClientCertificateWatch, conn: object, version: int = TLS13) -> None:
    watch.on_message(conn, "read", version, 22, 13, b"\x0d" + bytes(40))


def test_a_connection_asked_then_silent_is_a_refusal_once(clock: list[float]) -> None:
    watch = ClientCertificateWatch(clock=lambda: clock[0], window=30)
    conn = object()
    asked(watch, conn)
    watch.on_message(conn, "write", TLS13, 22, 11, bytes(8))  # an empty Certificate message
    watch.on_message(conn, "read", TLS13, 22, 20, bytes(36))  # TLS 1.3: Finished comes first
    assert watch.waiting(conn)
    refusal = watch.take_refusal()
    assert refusal is not None
    assert refusal.sent_certificate is False
    assert watch.take_refusal() is None  # one refusal explains one failure


def test_a_session_ticket_or_data_or_a_tls12_finished_means_accepted(clock: list[float]) -> None:
    watch = ClientCertificateWatch(clock=lambda: clock[0], window=30)
    ticket, data, finished = object(), object(), object()
    for conn in (ticket, data):
        asked(watch, conn)
    asked(watch, finished, TLS12)
    watch.on_message(ticket, "read", TLS13, 22, 4, bytes(200))  # NewSessionTicket
    watch.on_message(data, "read", TLS13, 0x101, 23, b"\x17")  # application data
    watch.on_message(finished, "read", TLS12, 22, 20, bytes(12))
    assert watch.take_refusal() is None


def test_an_old_request_for_a_certificate_explains_nothing(clock: list[float]) -> None:
    watch = ClientCertificateWatch(clock=lambda: clock[0], window=30)
    asked(watch, object())
    clock[0] += 30.5
    assert watch.take_refusal() is None


def test_the_watch_stays_bounded(clock: list[float]) -> None:
    watch = ClientCertificateWatch(clock=lambda: clock[0], window=30)
    conns = [object() for _ in range(1000)]
    for conn in conns:
        asked(watch, conn)
    assert sum(watch.waiting(conn) for conn in conns) <= 256
    assert watch.waiting(conns[-1])


def test_the_watch_retires_once_the_question_is_settled() -> None:
    """OpenSSL calls the watch for every record: it uninstalls itself once a handshake showed
    that Gini does not ask for a certificate, or took ours."""
    settles: list[tuple[str, int, int, int, bytes]] = [
        ("write", TLS13, 22, 20, bytes(36)),  # our Finished, never asked
        ("read", TLS13, 22, 4, bytes(200)),  # asked, then a session ticket
        ("read", TLS12, 22, 20, bytes(12)),  # asked, then the TLS 1.2 server's Finished
    ]
    for settle in settles:
        context = build_context(None)
        watch = context.client_certificate_watch  # type: ignore[attr-defined]
        conn = object()
        if settle[0] == "read":
            asked(watch, conn, settle[1])
        watch.on_message(conn, "write", settle[1], 22, 11, bytes(8))  # still undecided
        assert not watch.retired
        watch.on_message(conn, *settle)
        assert watch.retired
        assert context._msg_callback is None  # type: ignore[attr-defined]


def test_without_a_refusal_a_closed_connection_stays_a_disconnect() -> None:
    context = build_context(None)
    watch = context.client_certificate_watch  # type: ignore[attr-defined]
    conn = object()
    asked(watch, conn)
    watch.on_message(conn, "read", TLS13, 22, 4, bytes(200))  # accepted: a ticket came
    assert classify(aiohttp.ServerDisconnectedError(), context)[1] == "disconnect"
    asked(watch, object())  # asked, and nothing since
    assert classify(aiohttp.ServerDisconnectedError(), context)[1] == "tls_client_certificate"
    assert classify(aiohttp.ServerDisconnectedError(), context)[1] == "disconnect"
