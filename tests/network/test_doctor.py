"""`gini-auth-proxy doctor` against a healthy HTTPS simulator and broken setups."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.commands.doctor import PROBE_IDENTIFIER, Doctor
from proxy.config import Config, build_config
from proxy.sandbox import GiniSimulator

from ..conftest import CLIENT_SECRET, config_data, merge
from .support import (
    PROXY_PASSWORD,
    PROXY_USER,
    ConnectProxy,
    Pki,
    tls_simulator,
)


def data(sim: GiniSimulator, pki: Pki, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    base = merge(config_data(sim, tmp_path), {"upstream": {"tls": {"ca_file": str(pki.ca_file)}}})
    return merge(base, overrides)


async def diagnose(config_data: dict[str, Any], tmp_path: Path) -> tuple[bool, dict[str, str]]:
    lines: list[str] = []
    config: Config = build_config(config_data, {}, tmp_path)
    ok = await Doctor(config, lines.append).run()
    steps = {line[7:29].strip(): line for line in lines if line.startswith("[")}
    # Every failure says what to change, as a whole sentence.
    assert all(line.endswith((".", "?")) for line in lines if line.startswith("[FAIL]")), lines
    return ok, steps


async def test_healthy_setup_passes_every_step_and_sends_no_user_data(
    sim: GiniSimulator, pki: Pki, tmp_path: Path
) -> None:
    ok, steps = await diagnose(data(sim, pki, tmp_path), tmp_path)
    assert ok, steps
    assert all(line.startswith("[ ok ]") for line in steps.values()), steps
    assert set(steps) == {
        "config", "dns pay_api", "tcp pay_api", "tls pay_api", "dns user_center",
        "tcp user_center", "tls user_center", "client credentials", "clock skew", "store",
    }  # fmt: skip
    assert "days left" in steps["tls pay_api"]
    assert "issuer" in steps["tls pay_api"]
    assert "client-credentials grant" in steps["client credentials"]
    assert "0 user(s)" in steps["store"]
    # Only the client-credentials grant reached Gini: no user was created or logged in.
    assert [(r.app, r.path) for r in sim.state.requests] == [("uc", "/oauth/token")]
    assert sim.state.users_created == 0


async def test_without_flow_4_the_login_probe_uses_the_fixed_identifier(
    sim: GiniSimulator, pki: Pki, tmp_path: Path
) -> None:
    ok, steps = await diagnose(data(sim, pki, tmp_path, anonymous=None, store=None), tmp_path)
    assert ok, steps
    assert PROBE_IDENTIFIER in steps["client credentials"]
    (login,) = sim.state.requests
    assert login.path == "/login"
    assert {k.lower(): v for k, v in login.headers}["x-user-identifier"] == PROBE_IDENTIFIER


async def test_without_the_ca_the_tls_step_names_the_certificate(
    sim: GiniSimulator, pki: Pki, tmp_path: Path
) -> None:
    ok, steps = await diagnose(data(sim, pki, tmp_path, upstream={"tls": None}), tmp_path)
    assert not ok
    assert steps["tls pay_api"].startswith("[FAIL]")
    assert "certificate not trusted" in steps["tls pay_api"]
    assert "upstream.tls.ca_file" in steps["tls pay_api"]
    assert steps["client credentials"].startswith("[skip]")
    assert sim.state.requests_of("uc") == []


async def test_a_wrong_secret_fails_the_credentials_step(
    sim: GiniSimulator, pki: Pki, tmp_path: Path
) -> None:
    wrong = {"client": {"secret": "not-the-secret-1234"}}
    ok, steps = await diagnose(data(sim, pki, tmp_path, **wrong), tmp_path)
    assert not ok
    assert steps["client credentials"].startswith("[FAIL]")
    assert "refused them with 401" in steps["client credentials"]
    assert steps["client credentials"].endswith("check client.id and client.secret.")
    assert steps["tls user_center"].startswith("[ ok ]")
    assert steps["clock skew"].startswith("[ ok ]")  # Gini's Date comes with a refusal too


async def test_an_unreachable_gini_fails_the_tcp_step(
    sim: GiniSimulator, pki: Pki, tmp_path: Path
) -> None:
    config = data(sim, pki, tmp_path)
    await sim.close()
    ok, steps = await diagnose(config, tmp_path)
    assert not ok
    assert steps["dns pay_api"].startswith("[ ok ]")
    assert steps["tcp pay_api"].startswith("[FAIL]")
    assert "cannot connect" in steps["tcp pay_api"]
    assert steps["client credentials"].startswith("[skip]")


async def test_through_the_egress_proxy_and_with_a_wrong_proxy_password(
    sim: GiniSimulator, pki: Pki, tmp_path: Path
) -> None:
    egress = ConnectProxy()
    await egress.start()
    try:
        proxy = {"url": egress.url, "username": PROXY_USER, "password": PROXY_PASSWORD}
        ok, steps = await diagnose(
            data(sim, pki, tmp_path, upstream={"egress_proxy": proxy}), tmp_path
        )
        assert ok, steps
        assert "CONNECT" in steps["tcp pay_api"]
        assert "resolved by the egress proxy" in steps["dns pay_api"]
        assert steps["dns egress proxy"].startswith("[ ok ]")
        tunnels = egress.tunnels
        wrong = {**proxy, "password": "wrong-password-1"}
        ok, steps = await diagnose(
            data(sim, pki, tmp_path, upstream={"egress_proxy": wrong}), tmp_path
        )
    finally:
        await egress.close()
    assert tunnels >= 3  # two origins, then the credentials call
    assert not ok
    assert "refused the proxy credentials (407)" in steps["tcp pay_api"]
    assert "wrong-password-1" not in "\n".join(steps.values())


async def test_an_unreachable_store_fails_the_store_step(
    sim: GiniSimulator, pki: Pki, tmp_path: Path
) -> None:
    store = {"url": "postgresql://gini@127.0.0.1:1/none"}
    ok, steps = await diagnose(data(sim, pki, tmp_path, store=store), tmp_path)
    assert not ok
    assert steps["store"].startswith("[FAIL]")
    assert steps["client credentials"].startswith("[ ok ]")


@pytest.mark.slow  # three interpreter starts
async def test_the_command_exits_0_when_healthy_and_1_when_not(
    sim: GiniSimulator, pki: Pki, tmp_path: Path
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data(sim, pki, tmp_path)))
    code, out = await run_cli("doctor", "--config", str(path))
    assert code == 0, out
    assert "all checks passed" in out
    assert CLIENT_SECRET not in out
    path.write_text(yaml.safe_dump(data(sim, pki, tmp_path, upstream={"tls": None})))
    code, out = await run_cli("doctor", "--config", str(path))
    assert code == 1, out
    assert "[FAIL] tls pay_api" in out
    assert "Traceback" not in out
    path.write_text("client: {id: x}\n")
    code, out = await run_cli("doctor", "--config", str(path))
    assert code == 1
    assert "[FAIL] config" in out


async def run_cli(*args: str) -> tuple[int, str]:
    # A subprocess, so the simulator keeps serving on this test's event loop meanwhile.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode()


async def test_mtls_the_handshake_step_needs_the_client_certificate(
    pki: Pki, tmp_path: Path
) -> None:
    async with tls_simulator(pki.server_context(require_client_cert=True)) as strict:
        without = data(strict, pki, tmp_path)
        ok, steps = await diagnose(without, tmp_path)
        assert not ok
        assert steps["tls pay_api"].startswith("[FAIL]")
        assert "tls_client_certificate" in steps["tls pay_api"]
        pair = {
            "client_cert_file": str(pki.client_cert_file),
            "client_key_file": str(pki.client_key_file),
        }
        ok, steps = await diagnose(merge(without, {"upstream": {"tls": pair}}), tmp_path)
        assert ok, steps
        seen = {r.client_cert for r in strict.state.requests}
    assert seen == {"gini-auth-proxy-client"}
