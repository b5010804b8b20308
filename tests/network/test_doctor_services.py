"""`doctor` beyond the way to Gini: every Redis and PostgreSQL the config uses, the client
certificate's subject and expiry, and an http:// upstream that speaks TLS."""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from proxy.commands.doctor import Doctor
from proxy.config import build_config
from proxy.sandbox import GiniSimulator

from ..conftest import CLIENT_ID, CLIENT_SECRET, REDIS_URL, config_data, merge
from .support import Pki


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def diagnose(data: dict[str, Any], tmp_path: Path) -> tuple[bool, dict[str, str]]:
    lines: list[str] = []
    ok = await Doctor(build_config(data, {}, tmp_path), lines.append).run()
    steps = {line[7:29].strip(): line for line in lines if line.startswith("[")}
    # Every failure says what to change, as a whole sentence.
    assert all(line.endswith((".", "?")) for line in lines if line.startswith("[FAIL]")), lines
    assert lines[-1] == ("all checks passed" if ok else f"{len(failed(steps))} check(s) failed")
    return ok, steps


def failed(steps: dict[str, str]) -> list[str]:
    return [name for name, line in steps.items() if line.startswith("[FAIL]")]


def https(sim: GiniSimulator, pki: Pki, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    base = merge(config_data(sim, tmp_path), {"upstream": {"tls": {"ca_file": str(pki.ca_file)}}})
    return merge(base, overrides)


def cache(backend: str) -> dict[str, Any]:
    return {"response_cache": {"routes": ["/paymentProviders"], "backend": backend}}


@pytest.mark.parametrize("host", ["127.0.0.1", "redis.invalid"])
async def test_an_unreachable_redis_fails(
    sim: GiniSimulator, pki: Pki, tmp_path: Path, host: str
) -> None:
    port = closed_port()
    backend = f"redis://:cache-pass-4f1@{host}:{port}/0"
    ok, steps = await diagnose(https(sim, pki, tmp_path, **cache(backend)), tmp_path)
    assert not ok
    assert failed(steps) == ["response cache"], steps
    line = steps["response cache"]
    assert f"redis {host}:{port}" in line
    assert line.endswith("Check response_cache.backend and that Redis runs.")
    assert "cache-pass-4f1" not in "\n".join(steps.values())


async def test_a_running_redis_passes(sim: GiniSimulator, pki: Pki, tmp_path: Path) -> None:
    ok, steps = await diagnose(https(sim, pki, tmp_path, **cache(REDIS_URL)), tmp_path)
    if not ok and "response cache" in failed(steps) and os.environ.get("CI") != "true":
        pytest.skip(f"Redis at {REDIS_URL} is unreachable")
    assert ok, steps
    assert "answers PING" in steps["response cache"]


async def test_an_unreachable_postgresql_store_fails_and_names_its_address(
    sim: GiniSimulator, pki: Pki, tmp_path: Path
) -> None:
    port = closed_port()
    store = {"url": f"postgresql://gini:store-pass-77c@127.0.0.1:{port}/gini"}
    ok, steps = await diagnose(https(sim, pki, tmp_path, store=store), tmp_path)
    assert not ok
    assert failed(steps) == ["store"], steps
    assert f"postgresql 127.0.0.1:{port}:" in steps["store"]
    assert steps["store"].endswith("Check store.url and that the database runs.")
    assert "store-pass-77c" not in "\n".join(steps.values())


def client_pair(pki: Pki, tmp_path: Path, days: float) -> dict[str, str]:
    now = datetime.datetime.now(datetime.UTC)
    cert = pki.ca.issue_cert(
        "gini-auth-proxy-client",
        common_name="gini-auth-proxy-client",
        not_before=now - datetime.timedelta(days=400),
        not_after=now + datetime.timedelta(days=days),
    )
    cert_file, key_file = tmp_path / f"client-{days}.crt", tmp_path / f"client-{days}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return {"client_cert_file": str(cert_file), "client_key_file": str(key_file)}


# An expired one never gets this far: the config check refuses it.
@pytest.mark.parametrize(("days", "says"), [(365.5, "(365 days left)"), (10.5, "expires soon")])
async def test_the_client_certificate_subject_and_expiry(
    sim: GiniSimulator, pki: Pki, tmp_path: Path, days: float, says: str
) -> None:
    tls = {"ca_file": str(pki.ca_file), **client_pair(pki, tmp_path, days)}
    ok, steps = await diagnose(https(sim, pki, tmp_path, upstream={"tls": tls}), tmp_path)
    assert ok, steps  # a warning, not a failure
    line = steps["client certificate"]
    assert line.startswith("[ ok ]"), line
    assert "subject CN=gini-auth-proxy-client" in line
    assert says in line
    expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
    assert f"expires {expiry:%Y-%m-%d}" in line


async def test_an_http_upstream_that_speaks_tls_is_named(
    sim: GiniSimulator, pki: Pki, tmp_path: Path
) -> None:
    plain = sim.pay_api_url.replace("https://", "http://")
    ok, steps = await diagnose(https(sim, pki, tmp_path, upstream={"pay_api": plain}), tmp_path)
    assert not ok
    host_port = plain.removeprefix("http://").split("/")[0]
    assert steps["tls pay_api"].startswith("[FAIL]")
    assert f"{host_port} speaks TLS: use https:// in upstream.pay_api." in steps["tls pay_api"]
    assert steps["tls user_center"].startswith("[ ok ]")


async def test_a_plain_http_upstream_passes(tmp_path: Path) -> None:
    async with GiniSimulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as plain:
        ok, steps = await diagnose(config_data(plain, tmp_path), tmp_path)
    assert ok, steps
    assert "plain http" in steps["tls pay_api"]
