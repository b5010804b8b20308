"""`upstream.tls` against a real HTTPS Gini simulator signed by a CA made in the test."""

from __future__ import annotations

import asyncio
import datetime
import logging
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from proxy.config import build_config
from proxy.config.reader import ConfigError
from proxy.config.tls import TlsConfig, tls_file_problems
from proxy.sandbox import GiniSimulator
from proxy.transport.tls import TlsContext

from ..conftest import USER, RunningProxy, StartProxy, config_data, eventually, merge
from .support import Pki, run_flows, tls_simulator


def with_ca(pki: Pki, upstream: dict[str, Any] | None = None, **tls: Any) -> dict[str, Any]:
    return {"upstream": {**(upstream or {}), "tls": {"ca_file": str(pki.ca_file), **tls}}}


def upstream_failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "proxy.upstream"]


def errors(proxy: RunningProxy, reason: str, upstream: str = "pay_api") -> float:
    labels = {"upstream": upstream, "reason": reason}
    return proxy.metrics.registry.get_sample_value("gini_proxy_upstream_errors_total", labels) or 0


async def test_flows_1_to_4_over_https_with_a_private_ca(
    start_proxy: StartProxy, sim: GiniSimulator, pki: Pki
) -> None:
    proxy = await start_proxy(**with_ca(pki))
    await run_flows(proxy, sim, pki.client_context())
    assert all(r.client_cert is None for r in sim.state.requests)  # no client cert configured


async def test_without_the_ca_the_answer_is_fast_json_and_the_log_names_the_certificate(
    start_proxy: StartProxy, sim: GiniSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy()
    started = time.perf_counter()
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
        elapsed = time.perf_counter() - started
        body = await response.json()
    assert response.status == 502
    assert body["error"] == "bad_gateway"
    assert "TLS" in body["message"]
    assert body["requestId"] == response.headers["X-Request-Id"]
    print(f"untrusted certificate answered in {elapsed * 1000:.0f} ms")
    assert elapsed < 2.0, elapsed
    (record,) = upstream_failures(caplog)
    assert "TLS certificate not trusted" in record.getMessage()
    assert "certificate" in record.getMessage()
    assert record.exc_info is None  # no traceback
    assert record.exc_text is None
    assert errors(proxy, "tls_certificate") == 1
    assert sim.state.requests_of("pay") == []


async def test_token_calls_fail_at_once_on_an_untrusted_certificate(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy()
    started = time.perf_counter()
    for path in ("/_proxy/tokens/derived", "/_proxy/tokens/anonymous"):
        async with proxy.client.post(proxy.url + path, headers=USER) as response:
            assert response.status == 502
            assert (await response.json())["error"] == "bad_gateway"
    assert time.perf_counter() - started < 2.0
    # A trust problem is not retried: one failure, one log line per call.
    assert errors(proxy, "tls_certificate") == 1
    assert errors(proxy, "tls_certificate", "user_center") == 1
    assert len(upstream_failures(caplog)) == 2


async def test_an_expired_certificate_is_named_in_the_log(
    start_proxy: StartProxy, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    context = pki.server_context()
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    expired = pki.ca.issue_cert(
        "127.0.0.1", not_before=past - datetime.timedelta(days=30), not_after=past
    )
    expired.configure_cert(context)
    async with tls_simulator(context) as old:
        proxy = await start_proxy(**with_ca(pki, {"pay_api": old.pay_api_url}))
        async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
            assert response.status == 502
    (record,) = upstream_failures(caplog)
    assert "expired" in record.getMessage()
    assert errors(proxy, "tls_certificate") == 1


async def test_a_hostname_mismatch_is_named_in_the_log(
    start_proxy: StartProxy, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    async with tls_simulator(pki.server_context(hostname="pay-api.gini.test")) as other:
        proxy = await start_proxy(**with_ca(pki, {"pay_api": other.pay_api_url}))
        async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
            assert response.status == 502
            assert (await response.json())["error"] == "bad_gateway"
    (record,) = upstream_failures(caplog)
    assert "hostname mismatch" in record.getMessage()
    assert errors(proxy, "tls_hostname") == 1


async def test_mtls_the_simulator_sees_the_client_certificate(
    start_proxy: StartProxy, pki: Pki
) -> None:
    async with tls_simulator(pki.server_context(require_client_cert=True)) as strict:
        proxy = await start_proxy(
            **with_ca(
                pki,
                {"pay_api": strict.pay_api_url, "user_center": strict.user_center_url},
                client_cert_file=str(pki.client_cert_file),
                client_key_file=str(pki.client_key_file),
            )
        )
        # The device of flow 3 must show a certificate too on this strict simulator.
        device = pki.client_context()
        pki.ca.issue_cert("device", common_name="device").configure_cert(device)
        await run_flows(proxy, strict, device)
        seen = {r.client_cert for r in strict.state.requests if r.app == "uc"}
        seen |= {
            r.client_cert
            for r in strict.state.requests
            if r.app == "pay" and r.path != "/documents"
        }
    assert seen == {"gini-auth-proxy-client"}


async def test_mtls_without_a_client_certificate_fails_cleanly(
    start_proxy: StartProxy, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    async with tls_simulator(pki.server_context(require_client_cert=True)) as strict:
        proxy = await start_proxy(**with_ca(pki, {"pay_api": strict.pay_api_url}))
        async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
            body = await response.json()
        assert strict.state.requests_of("pay") == []
    assert response.status == 502
    assert body["error"] == "bad_gateway"
    (record,) = upstream_failures(caplog)
    assert "client certificate" in record.getMessage()
    assert record.exc_info is None
    assert errors(proxy, "tls_client_certificate") == 1


async def test_keep_alive_100_requests_use_a_handful_of_tls_connections(
    start_proxy: StartProxy, sim: GiniSimulator, pki: Pki
) -> None:
    proxy = await start_proxy(**with_ca(pki))
    for _ in range(100):
        async with proxy.client.get(proxy.url + "/paymentProviders", headers=USER) as response:
            assert response.status == 200
            await response.read()
    peers = {r.peer for r in sim.state.requests_of("pay")}
    print(f"TLS connections for 100 sequential requests: {len(peers)}")
    assert 1 <= len(peers) <= 3


async def test_rotated_ca_file_is_picked_up_without_a_restart(
    start_proxy: StartProxy, sim: GiniSimulator, pki: Pki, tmp_path: Path
) -> None:
    ca_file = tmp_path / "rotating-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))  # some other CA: Gini is not trusted
    proxy = await start_proxy(upstream={"tls": {"ca_file": str(ca_file)}})
    tls = proxy.services.upstream.tls
    async with proxy.client.get(proxy.url + "/paymentProviders", headers=USER) as response:
        assert response.status == 502
    ca_file.write_text("not a certificate\n")  # a half-written file is never applied
    assert tls.refresh() is False
    assert tls.refresh() is False  # unchanged since the failed attempt? still not loadable
    pki.ca.cert_pem.write_to_path(str(ca_file))
    assert tls.refresh() is True
    async with proxy.client.get(proxy.url + "/paymentProviders", headers=USER) as response:
        assert response.status == 200
    assert tls.refresh() is False  # nothing changed since


def test_context_checks_files_on_use_at_most_every_interval(pki: Pki) -> None:
    now = [0.0]
    tls = TlsContext(TlsConfig(ca_file=pki.ca_file), interval=10, clock=lambda: now[0])
    first = tls.get()
    trustme.CA().cert_pem.write_to_path(str(pki.ca_file))
    now[0] = 9.9
    assert tls.get() is first  # not yet looked at
    now[0] = 10.0
    assert tls.get() is not first
    assert tls.rebuilds == 1
    assert TlsContext(None).get().verify_mode.name == "CERT_REQUIRED"


# -- check-config ----------------------------------------------------------------------------


def test_check_config_lists_every_tls_file_problem(tmp_path: Path, pki: Pki) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    other_key = tmp_path / "other.key"
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(str(other_key))
    data = merge(
        config_data_for(tmp_path),
        {
            "upstream": {
                "tls": {
                    "ca_file": str(tmp_path / "missing.pem"),
                    "client_cert_file": str(pki.client_cert_file),
                    "client_key_file": str(other_key),
                }
            }
        },
    )
    with pytest.raises(ConfigError) as caught:
        build_config(data, {}, tmp_path)
    problems = caught.value.problems
    assert any(p.startswith("upstream.tls.ca_file: cannot read") for p in problems), problems
    assert any(
        p.startswith("upstream.tls.client_key_file:") and "does not match" in p for p in problems
    ), problems
    assert [p for p in problems if p.startswith("upstream.tls")] == [
        p for p in problems if "upstream.tls" in p
    ]
    assert len([p for p in problems if p.startswith("upstream.tls")]) == 2


def test_tls_file_problems_name_each_kind_of_mistake(tmp_path: Path, pki: Pki) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    assert tls_file_problems(TlsConfig(ca_file=junk)) == [
        ("ca_file", f"{junk} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")
    ]
    assert tls_file_problems(TlsConfig(client_cert_file=pki.client_cert_file)) == [
        ("client_key_file", "is required when the other half of the client pair is set")
    ]
    problems = dict(tls_file_problems(TlsConfig(None, junk, junk)))
    assert "holds no PEM certificate" in problems["client_cert_file"]
    assert "holds no PEM private key" in problems["client_key_file"]
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(_encrypted_key())
    problems = dict(tls_file_problems(TlsConfig(None, pki.client_cert_file, encrypted)))
    assert "is encrypted" in problems["client_key_file"]
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    old = pki.ca.issue_cert("old", not_before=past - datetime.timedelta(days=9), not_after=past)
    old_cert, old_key = tmp_path / "old.crt", tmp_path / "old.key"
    old.cert_chain_pems[0].write_to_path(str(old_cert))
    old.private_key_pem.write_to_path(str(old_key))
    problems = dict(tls_file_problems(TlsConfig(None, old_cert, old_key)))
    assert "expired on" in problems["client_cert_file"]
    assert (
        tls_file_problems(TlsConfig(pki.ca_file, pki.client_cert_file, pki.client_key_file)) == []
    )


def test_there_is_no_key_to_turn_verification_off(tmp_path: Path) -> None:
    data = merge(config_data_for(tmp_path), {"upstream": {"tls": {"verify": False}}})
    with pytest.raises(ConfigError) as caught:
        build_config(data, {}, tmp_path)
    assert any(p.startswith("upstream.tls.verify: unknown key") for p in caught.value.problems)


def config_data_for(tmp_path: Path) -> dict[str, Any]:
    class Urls:
        pay_api_url = "https://pay-api.gini.net"
        user_center_url = "https://user.gini.net"

    return config_data(Urls(), tmp_path)  # type: ignore[arg-type]


def _encrypted_key() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )


@pytest.fixture
async def openssl_server(pki: Pki, tmp_path: Path) -> AsyncIterator[str]:
    """`openssl s_server` demanding a client certificate over TLS 1.3, as OpenSSL-based servers
    do: it refuses after the handshake with an alert (asyncio servers just close)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    server_pem = tmp_path / "server.pem"
    pki.ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        openssl, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(server_pem),
        "-CAfile", str(pki.ca_file), "-Verify", "1", "-verify_return_error", "-tls1_3", "-www",
        "-quiet", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:

        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.close()
            return True

        await eventually(listening, what="openssl s_server listening")
        yield f"https://127.0.0.1:{port}"
    finally:
        process.terminate()
        await process.wait()


async def test_tls13_refusal_of_a_missing_client_certificate_is_named(
    start_proxy: StartProxy, pki: Pki, openssl_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy(**with_ca(pki, {"pay_api": openssl_server}))
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
        assert response.status == 502
        assert (await response.json())["error"] == "bad_gateway"
    (record,) = upstream_failures(caplog)
    assert "CERTIFICATE_REQUIRED" in record.getMessage()
    assert errors(proxy, "tls_client_certificate") == 1
    with_cert = await start_proxy(
        **with_ca(
            pki,
            {"pay_api": openssl_server},
            client_cert_file=str(pki.client_cert_file),
            client_key_file=str(pki.client_key_file),
        )
    )
    async with with_cert.client.get(with_cert.url + "/documents", headers=USER) as response:
        assert response.status == 200  # s_server's -www status page: the handshake passed
        assert b"gini-auth-proxy-client" in await response.read()


async def test_sighup_reload_applies_rotated_tls_files_and_counts_them(
    start_proxy: StartProxy, sim: GiniSimulator, pki: Pki, tmp_path: Path
) -> None:
    # The reloader (SIGHUP, reload_interval_seconds) applies TLS files at once, not only the
    # context's own 10 s check, and counts them like every other reloadable secret.
    ca_file = tmp_path / "reloaded-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    proxy = await start_proxy(
        upstream={"tls": {"ca_file": str(ca_file)}}, reload_interval_seconds=0
    )
    async with proxy.client.get(proxy.url + "/paymentProviders", headers=USER) as response:
        assert response.status == 502
    ca_file.write_text("")  # an emptied file is never applied
    assert await proxy.services.reloader.reload() == {"upstream.tls": "error"}
    pki.ca.cert_pem.write_to_path(str(ca_file))
    assert await proxy.services.reloader.reload() == {"upstream.tls": "applied"}
    async with proxy.client.get(proxy.url + "/paymentProviders", headers=USER) as response:
        assert response.status == 200
    labels = {"secret": "upstream.tls", "result": "applied"}
    assert proxy.metrics.registry.get_sample_value("gini_proxy_secret_reloads_total", labels) == 1
