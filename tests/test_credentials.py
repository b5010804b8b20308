"""`proxy.credentials`: one holder for what the proxy shows Gini and the egress proxy, one probe
for a client secret (the reloader's and doctor's), and what Gini sees of the proxy itself."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy import __version__
from proxy.commands.doctor import Doctor
from proxy.config import Config, build_config
from proxy.credentials import PROBE_IDENTIFIER, Credentials, basic_auth, verdict
from proxy.sandbox import GiniSimulator
from proxy.signing.signer import JwtSigner

from .conftest import CLIENT_ID, CLIENT_SECRET, USER, RunningProxy, StartProxy, config_data, merge
from .jwt_support import ISSUER, ec_pem

NEW_SECRET = "rotated-client-secret-c0ffee"


def config_of(sim: GiniSimulator, tmp_path: Path, **overrides: Any) -> Config:
    return build_config(merge(config_data(sim, tmp_path), overrides), {}, tmp_path)


def jwt_config(sim: GiniSimulator, tmp_path: Path, claim: str | None = None) -> Config:
    pem = tmp_path / "jwt.pem"
    pem.write_text(ec_pem())
    claims = {"client_secret": claim} if claim else {}
    section = {"issuer": ISSUER, "signing_keys": [{"file": str(pem)}], "claims": claims}
    return config_of(sim, tmp_path, client={"auth": "jwt"}, jwt=section)


def header_values(record: Any, name: str) -> list[str]:
    return [value for key, value in record.headers if key.lower() == name.lower()]


# --- Basic credentials ---------------------------------------------------------------------

_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@given(user=_TEXT.filter(lambda text: ":" not in text), password=_TEXT)
def test_basic_auth_round_trips_any_utf8_credentials(user: str, password: str) -> None:
    value = basic_auth(user, password)
    scheme, _, encoded = value.partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded, validate=True).decode() == f"{user}:{password}"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        *[(200, "accepted"), (204, "accepted"), (400, "refused"), (401, "refused")],
        *[(403, "refused"), (429, "unavailable"), (500, "unavailable"), (503, "unavailable")],
        (302, "unavailable"),
    ],
)
def test_what_a_probe_answer_says(status: int, expected: str) -> None:
    assert verdict(status) == expected


def test_flow_1_is_basic_by_default_and_a_swap_changes_every_basic_header(
    sim: GiniSimulator, tmp_path: Path
) -> None:
    credentials = Credentials(config_of(sim, tmp_path))
    headers: dict[str, str] = {}
    credentials.flow1.sign(headers, "a" * 64)
    assert headers == {
        "Authorization": basic_auth(CLIENT_ID, CLIENT_SECRET),
        "X-User-Identifier": "a" * 64,
    }
    credentials.use_client_secret(NEW_SECRET)
    credentials.flow1.sign(headers, "a" * 64)
    assert headers["Authorization"] == credentials.basic == basic_auth(CLIENT_ID, NEW_SECRET)
    assert credentials.client_secret_forms(NEW_SECRET) == (NEW_SECRET, credentials.basic)


def test_jwt_mode_signs_flow_1_and_a_swap_reaches_the_claims_of_cached_users(
    sim: GiniSimulator, tmp_path: Path
) -> None:
    config = jwt_config(sim, tmp_path, claim="x-client-secret")
    assert config.jwt is not None
    signer = JwtSigner(config.jwt, config.client)
    credentials = Credentials(config, signer)

    def secret_claim(identifier: str) -> str:
        headers: dict[str, str] = {}
        credentials.flow1.sign(headers, identifier)
        assert set(headers) == {"X-JWT-Authorization"}, "no Basic credentials in jwt mode"
        token = headers["X-JWT-Authorization"].removeprefix("Bearer ")
        claim = jwt.decode(token, options={"verify_signature": False})["x-client-secret"]
        assert isinstance(claim, str)
        return claim

    assert secret_claim("cached") == CLIENT_SECRET
    assert len(signer) == 1
    credentials.use_client_secret(NEW_SECRET)
    assert len(signer) == 0, "no JWT signed with the old secret is reused"
    assert secret_claim("cached") == NEW_SECRET
    assert secret_claim("new") == NEW_SECRET
    assert credentials.basic == basic_auth(CLIENT_ID, NEW_SECRET)  # /login follows too


def test_the_refused_hook_runs_for_both_modes(sim: GiniSimulator, tmp_path: Path) -> None:
    config = jwt_config(sim, tmp_path)
    assert config.jwt is not None
    signer = JwtSigner(config.jwt, config.client)
    refusals: list[str] = []
    for credentials in (Credentials(config_of(sim, tmp_path)), Credentials(config, signer)):
        credentials.refused()  # no hook yet: nothing happens
        credentials.on_refused(lambda: refusals.append("checked"))
        headers: dict[str, str] = {}
        credentials.flow1.sign(headers, "b" * 64)
        credentials.flow1.refused("b" * 64, headers)
    assert refusals == ["checked", "checked"]
    assert len(signer) == 0, "the refused JWT is not reused"


def test_jwt_mode_without_a_signer_is_a_programming_error(
    sim: GiniSimulator, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="signer"):
        Credentials(jwt_config(sim, tmp_path))


# --- the one probe -------------------------------------------------------------------------


def test_the_probe_is_a_user_center_grant_with_flow_4_else_a_login(
    sim: GiniSimulator, tmp_path: Path
) -> None:
    grant = Credentials(config_of(sim, tmp_path)).probe(NEW_SECRET)
    assert (grant.user_center, grant.method) == (True, "GET")
    assert grant.url == sim.user_center_url + "/oauth/token?grant_type=client_credentials"
    assert grant.headers["Authorization"] == basic_auth(CLIENT_ID, NEW_SECRET)
    login = Credentials(config_of(sim, tmp_path, anonymous=None, store=None)).probe()
    assert (login.user_center, login.method, login.url) == (
        False,
        "POST",
        sim.pay_api_url + "/login",
    )
    assert login.headers["X-User-Identifier"] == PROBE_IDENTIFIER
    assert login.headers["Authorization"] == basic_auth(CLIENT_ID, CLIENT_SECRET)


async def test_doctor_and_the_reloader_send_the_same_probe(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    secret_file = tmp_path / "client_secret"
    secret_file.write_text(CLIENT_SECRET)
    overrides: dict[str, Any] = {"anonymous": None, "store": None}
    overrides["client"] = {"secret": {"file": str(secret_file)}}
    proxy = await start_proxy(**overrides, reload_interval_seconds=0)
    assert await Doctor(proxy.config, lambda _: None).run()
    sim.accept_client_secrets(CLIENT_SECRET, NEW_SECRET)
    secret_file.write_text(NEW_SECRET)
    assert await proxy.services.reloader.reload() == {"client.secret": "applied"}
    doctor_probe, reload_probe = sim.state.requests_of("pay")
    for probe in (doctor_probe, reload_probe):
        assert probe.path == "/login"
        assert header_values(probe, "X-User-Identifier") == [PROBE_IDENTIFIER]
    assert header_values(doctor_probe, "Authorization") == [basic_auth(CLIENT_ID, CLIENT_SECRET)]
    assert header_values(reload_probe, "Authorization") == [basic_auth(CLIENT_ID, NEW_SECRET)]


# --- who Gini sees -------------------------------------------------------------------------


async def test_gini_sees_the_proxy_user_agent_unless_the_caller_sent_one(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    ours = f"gini-auth-proxy/{__version__}"
    async with proxy.client.get(
        proxy.url + "/documents", headers=USER, skip_auto_headers=["User-Agent"]
    ) as answer:
        assert answer.status == 200
    assert header_values(sim.state.requests_of("pay")[-1], "User-Agent") == [ours]
    async with proxy.client.get(
        proxy.url + "/documents", headers={**USER, "User-Agent": "billing-service/2.1"}
    ) as answer:
        assert answer.status == 200
    assert header_values(sim.state.requests_of("pay")[-1], "User-Agent") == ["billing-service/2.1"]
    # The proxy's own calls (flows 2-4) always say who makes them.
    async with proxy.client.post(
        proxy.url + "/_proxy/tokens/anonymous", headers={**USER, "User-Agent": "app/1"}
    ) as answer:
        assert answer.status == 200
    for record in sim.state.requests_of("uc"):
        assert header_values(record, "User-Agent") == [ours]
