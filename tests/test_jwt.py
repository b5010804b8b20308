"""JWT mutual authentication end to end: the proxy signs, the admin listener publishes the
JWKS, and the simulator fetches it and verifies every flow-1 request as Gini does."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from proxy.config.signing_keys import load_signing_key
from proxy.sandbox import GiniSimulator
from proxy.sandbox.jwt_auth import JwtSettings

from .conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    HMAC_KEY,
    USER,
    RunningProxy,
    StartProxy,
    eventually,
    paced_load,
)
from .jwt_support import ISSUER, JWKS_PATH, PRIVATE_JWK_MEMBERS, ec_pem, jwt_overrides, rsa_pem
from .secret_volume import SecretVolume


def identifier(user_id: str) -> str:
    return hmac.new(HMAC_KEY.encode(), user_id.encode(), hashlib.sha256).hexdigest()


def sample(proxy: RunningProxy, name: str, **labels: str) -> float:
    return proxy.metrics.registry.get_sample_value(name, labels) or 0.0


async def jwt_proxy(
    start_proxy: StartProxy,
    sim: GiniSimulator,
    tmp_path: Path,
    *pems: str,
    settings: dict[str, Any] | None = None,
    **overrides: Any,
) -> RunningProxy:
    """A jwt-mode proxy with these keys, and the simulator verifying against its JWKS."""
    options = jwt_overrides(tmp_path / "keys", *pems, **overrides.pop("jwt", {}))
    proxy = await start_proxy(**{**options, **overrides})
    sim.enable_jwt(JwtSettings(proxy.admin_url + JWKS_PATH, ISSUER, **(settings or {})))
    return proxy


async def fetch_jwks(proxy: RunningProxy) -> tuple[dict[str, Any], aiohttp.ClientResponse]:
    async with proxy.client.get(proxy.admin_url + JWKS_PATH) as answer:
        return await answer.json(), answer


def sent_jwt(sim: GiniSimulator) -> str:
    """The X-JWT-Authorization token of the last Pay API request, checked for what must not be
    there besides it."""
    record = sim.state.requests_of("pay")[-1]
    names = [name.lower() for name, _ in record.headers]
    assert "authorization" not in names, "no Basic credentials in jwt mode"
    assert "x-user-identifier" not in names, "the claim carries the identifier"
    values = [v for n, v in record.headers if n.lower() == "x-jwt-authorization"]
    assert len(values) == 1
    assert values[0].startswith("Bearer ")
    return values[0].removeprefix("Bearer ")


# --- the "done when" list --------------------------------------------------------------------


async def test_two_es256_keys_published_and_flow1_verified_by_gini(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    first, second = ec_pem(), ec_pem()
    proxy = await jwt_proxy(start_proxy, sim, tmp_path, first, second)
    keys = [load_signing_key(pem, "ES256") for pem in (first, second)]

    jwks, answer = await fetch_jwks(proxy)
    assert answer.status == 200
    assert answer.headers["Cache-Control"] == "public, max-age=300"
    assert answer.content_type == "application/json"
    assert [k["kid"] for k in jwks["keys"]] == [k.kid for k in keys]
    for published in jwks["keys"]:
        assert published["alg"] == "ES256"
        assert published["use"] == "sig"
        assert published["kty"] == "EC"
        assert published["crv"] == "P-256"
        assert not PRIVATE_JWK_MEMBERS & set(published), "private key material published"

    async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
        assert answer.status == 200, await answer.text()
    token = sent_jwt(sim)
    header = jwt.get_unverified_header(token)
    assert header["kid"] == keys[0].kid, "the first key signs"
    assert header["alg"] == "ES256"
    public = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims = jwt.decode(token, public.key, algorithms=["ES256"], issuer=ISSUER)
    assert claims["x-user-identifier"] == identifier(USER["X-User-Id"])
    assert claims["x-client-id"] == CLIENT_ID
    assert CLIENT_SECRET not in json.dumps(claims), "no secret claim unless configured"
    assert 0 < claims["exp"] - claims["iat"] <= 300
    assert abs(claims["iat"] - time.time()) < 5
    # Gini acted as the derived user of that identifier.
    assert sim.state.requests_of("pay")[-1].namespace == identifier(USER["X-User-Id"])
    assert sim.config.jwt is not None
    assert sim.config.jwt.verified == 1

    # The same user's JWT is reused: one signature for several requests.
    for _ in range(3):
        async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
            assert answer.status == 200
        assert sent_jwt(sim) == token
    assert sample(proxy, "gini_proxy_jwt_signed_total") == 1
    # Another user gets a JWT of their own.
    other = {"X-User-Id": "bob@example.com"}
    async with proxy.client.get(proxy.url + "/documents", headers=other) as answer:
        assert answer.status == 200
    assert jwt.decode(sent_jwt(sim), options={"verify_signature": False})[
        "x-user-identifier"
    ] == identifier("bob@example.com")
    assert sample(proxy, "gini_proxy_jwt_signed_total") == 2

    # Token vending keeps Basic client credentials (Gini documents no JWT for /login).
    async with proxy.client.post(proxy.url + "/_proxy/tokens/derived", headers=USER) as answer:
        assert answer.status == 200, await answer.text()
        vended = (await answer.json())["access_token"]
    login = sim.state.requests_of("pay")[-1]
    assert login.path == "/login"
    basic = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert (dict(login.headers)["Authorization"]) == basic
    # ... and the vended token acts as the same Gini user as the JWT (flow 3).
    bearer = {"Authorization": f"Bearer {vended}"}
    async with proxy.client.get(sim.pay_api_url + "/documents", headers=bearer) as answer:
        assert answer.status == 200
    assert sim.state.requests_of("pay")[-1].namespace == identifier(USER["X-User-Id"])


async def test_caller_credentials_never_reach_gini_in_jwt_mode(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    proxy = await jwt_proxy(start_proxy, sim, tmp_path, ec_pem())
    forged = jwt.encode({"iss": ISSUER}, "x" * 32, algorithm="HS256")
    headers = {
        **USER,
        "Authorization": "Basic Zm9vOmJhcg==",
        "X-JWT-Authorization": f"Bearer {forged}",
        "X-User-Identifier": "chosen-by-caller",
    }
    async with proxy.client.get(proxy.url + "/documents", headers=headers) as answer:
        assert answer.status == 200
    assert sent_jwt(sim) != forged


async def test_rs256_keys_sign_and_verify(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    proxy = await jwt_proxy(start_proxy, sim, tmp_path, rsa_pem(2048), jwt={"algorithm": "RS256"})
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
        assert answer.status == 200, await answer.text()
    assert jwt.get_unverified_header(sent_jwt(sim))["alg"] == "RS256"
    jwks, _ = await fetch_jwks(proxy)
    assert jwks["keys"][0]["kty"] == "RSA"
    assert not PRIVATE_JWK_MEMBERS & set(jwks["keys"][0])


async def test_client_secret_claim_only_when_configured(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    claims = {"user_identifier": "uid", "client_id": "cid", "client_secret": "csecret"}
    proxy = await jwt_proxy(
        start_proxy,
        sim,
        tmp_path,
        ec_pem(),
        jwt={"claims": claims},
        settings={
            "user_identifier_claim": "uid",
            "client_id_claim": "cid",
            "client_secret_claim": "csecret",
        },
    )
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
        assert answer.status == 200, await answer.text()
    sent = jwt.decode(sent_jwt(sim), options={"verify_signature": False})
    assert sent["csecret"] == CLIENT_SECRET
    assert sent["uid"] == identifier(USER["X-User-Id"])
    assert sent["cid"] == CLIENT_ID


# --- the admin endpoint ----------------------------------------------------------------------


async def test_no_jwks_without_a_jwt_section(proxy: RunningProxy) -> None:
    async with proxy.client.get(proxy.admin_url + JWKS_PATH) as answer:
        assert answer.status == 404
        body = await answer.json()
    assert body["error"] == "not_found"
    assert body["requestId"] == answer.headers["X-Request-Id"]


async def test_basic_mode_publishes_keys_but_sends_basic(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    options = jwt_overrides(tmp_path / "keys", ec_pem())
    proxy = await start_proxy(client={"auth": "basic"}, jwt=options["jwt"])
    jwks, answer = await fetch_jwks(proxy)
    assert answer.status == 200
    assert len(jwks["keys"]) == 1
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
        assert answer.status == 200
    names = {name.lower() for name, _ in sim.state.requests_of("pay")[-1].headers}
    assert {"authorization", "x-user-identifier"} <= names
    assert "x-jwt-authorization" not in names


# --- what the simulated Gini refuses ---------------------------------------------------------


async def test_wrong_issuer_is_refused_logged_with_kid_and_counted(
    start_proxy: StartProxy,
    sim: GiniSimulator,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    pem = ec_pem()
    proxy = await jwt_proxy(start_proxy, sim, tmp_path, pem)
    sim.enable_jwt(JwtSettings(proxy.admin_url + JWKS_PATH, "https://someone-else.test"))
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
        assert answer.status == 401  # Gini's answer passes through
    token = sent_jwt(sim)
    assert sample(proxy, "gini_proxy_jwt_rejected_total") == 1
    refused = [r for r in caplog.records if r.name == "proxy.jwt" and "refused" in r.message]
    assert len(refused) == 1
    assert refused[0].__dict__["kid"] == load_signing_key(pem, "ES256").kid
    assert token not in caplog.text
    assert token.split(".")[2] not in caplog.text
    assert pem.splitlines()[1] not in caplog.text
    # The refused JWT is not reused: the next request carries a fresh signature.
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
        assert answer.status == 401
    assert sample(proxy, "gini_proxy_jwt_signed_total") == 2


async def test_wrong_client_id_is_refused(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    proxy = await jwt_proxy(start_proxy, sim, tmp_path, ec_pem(), client={"id": "another-client"})
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
        assert answer.status == 401
        assert "client" in (await answer.json())["message"]


async def test_expired_jwt_is_refused(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    proxy = await jwt_proxy(start_proxy, sim, tmp_path, ec_pem())
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
        assert answer.status == 200
    sim.state.advance_time(301)  # Gini's clock passes the cached JWT's exp
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
        assert answer.status == 401
        assert "expired" in (await answer.json())["message"]
    assert sample(proxy, "gini_proxy_jwt_rejected_total") == 1


async def test_unknown_kid_is_refused_until_the_jwks_is_refetched(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    """Signing with a key Gini has not fetched yet fails: why the runbook publishes first."""
    old, new = ec_pem(), ec_pem()
    proxy = await jwt_proxy(
        start_proxy, sim, tmp_path, old, settings={"cache_seconds": 3600, "refetch_seconds": 3600}
    )
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
        assert answer.status == 200
    signer = proxy.services.jwt_signer
    assert signer is not None
    signer.replace_keys([new])  # skipping steps 1 and 2 of the rotation
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
        assert answer.status == 401
        assert "unknown key" in (await answer.json())["message"]
    assert sim.config.jwt is not None
    assert sim.config.jwt.cache.fetches == 1, "refetches on an unknown kid are rate-limited"
    # Once Gini may refetch on an unknown kid, it finds the new key.
    sim.config.jwt.settings.refetch_seconds = 0
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
        assert answer.status == 200
    assert sim.config.jwt.cache.fetches == 2


async def test_forged_and_tampered_jwts_are_refused(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    pem = ec_pem()
    proxy = await jwt_proxy(start_proxy, sim, tmp_path, pem)
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
        assert answer.status == 200
    good = sent_jwt(sim)
    head, _body, signature = good.split(".")
    claims = jwt.decode(good, options={"verify_signature": False})
    claims["x-user-identifier"] = identifier("mallory")
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    attacker = load_signing_key(ec_pem(), "ES256")
    kid = jwt.get_unverified_header(good)["kid"]
    candidates = {
        "tampered claims": f"{head}.{forged_body}.{signature}",
        "another key, same kid": jwt.encode(
            claims, attacker.private, algorithm="ES256", headers={"kid": kid}
        ),
        "alg none": jwt.encode(claims, "", algorithm="none", headers={"kid": kid}),
        "not a JWT": "garbage",
    }
    for what, token in candidates.items():
        headers = {"X-JWT-Authorization": f"Bearer {token}"}
        async with proxy.client.get(sim.pay_api_url + "/documents", headers=headers) as answer:
            assert answer.status == 401, what
    headers = {"X-JWT-Authorization": f"Bearer {good}"}
    async with proxy.client.get(sim.pay_api_url + "/documents", headers=headers) as answer:
        assert answer.status == 200


# --- signer: reuse window, key swaps, metrics ------------------------------------------------


async def test_jwt_reused_until_the_refresh_margin(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    proxy = await jwt_proxy(start_proxy, sim, tmp_path, ec_pem())
    signer = proxy.services.jwt_signer
    assert signer is not None
    now = [1_000_000.0]
    signer.clock = lambda: now[0]
    first = signer.header_for("user-a")
    now[0] += 239  # lifetime 300, margin 60
    assert signer.header_for("user-a") == first
    now[0] += 2
    renewed = signer.header_for("user-a")
    assert renewed != first
    claims = jwt.decode(renewed.removeprefix("Bearer "), options={"verify_signature": False})
    assert claims["iat"] == 1_000_241


async def test_bad_replacement_keys_change_nothing_and_metrics_follow_the_signer(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    first, second = ec_pem(), ec_pem()
    proxy = await jwt_proxy(start_proxy, sim, tmp_path, first)
    signer = proxy.services.jwt_signer
    assert signer is not None
    before, _ = await fetch_jwks(proxy)
    with pytest.raises(ValueError, match=r"signing_keys\[1\]"):
        signer.replace_keys([second, rsa_pem(2048)])
    after, _ = await fetch_jwks(proxy)
    assert after == before
    kid1 = load_signing_key(first, "ES256").kid
    kid2 = load_signing_key(second, "ES256").kid
    assert sample(proxy, "gini_proxy_jwt_signing_key_info", kid=kid1) == 1
    assert sample(proxy, "gini_proxy_jwt_keys_published") == 1
    signer.replace_keys([second, first])
    assert sample(proxy, "gini_proxy_jwt_signing_key_info", kid=kid2) == 1
    assert (
        proxy.metrics.registry.get_sample_value("gini_proxy_jwt_signing_key_info", {"kid": kid1})
        is None
    )
    assert sample(proxy, "gini_proxy_jwt_keys_published") == 2
    assert 0 <= sample(proxy, "gini_proxy_jwt_signing_key_age_seconds") < 5
    async with proxy.client.get(proxy.admin_url + "/metrics") as answer:
        text = await answer.text()
    for name in ("gini_proxy_jwt_signed_total", "gini_proxy_jwt_rejected_total"):
        assert name in text
    assert first.splitlines()[1] not in text


# --- rotation under load ---------------------------------------------------------------------


@pytest.mark.slow
async def test_key_rotation_under_load_loses_no_request(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    """The four-step runbook at ~50 flow-1 requests/s, each step one edit of the Secret (a PEM
    bundle, first key signs) picked up by a reload as on SIGHUP: not one request fails."""
    from .secret_volume import SecretVolume

    old, new = ec_pem(), ec_pem()
    volume = SecretVolume(tmp_path / "jwt-secret")
    volume.write(keys=old)
    cache_seconds = 0.5
    proxy = await jwt_proxy(
        start_proxy,
        sim,
        tmp_path,
        old,
        # Refetching on an unknown kid is off: only the runbook's waiting keeps this clean.
        settings={"cache_seconds": cache_seconds, "refetch_seconds": 3600},
        jwt={"signing_keys": [{"file": str(volume.path("keys"))}]},
        reload_interval_seconds=0,
    )
    reloader = proxy.services.reloader

    async def edit(*pems: str) -> None:
        volume.write(keys="".join(pems))
        assert (await reloader.reload())["jwt.signing_keys"] == "applied"

    old_kid, new_kid = (load_signing_key(p, "ES256").kid for p in (old, new))
    statuses: list[int] = []
    kids: list[str] = []
    stop = asyncio.Event()

    async def one(n: int) -> None:
        headers = {"X-User-Id": f"user-{n % 10}"}
        async with proxy.client.get(proxy.url + "/documents", headers=headers) as answer:
            statuses.append(answer.status)
            await answer.read()

    def last_kid() -> str:
        return str(jwt.get_unverified_header(sent_jwt(sim))["kid"])

    verifier = sim.config.jwt
    assert verifier is not None

    async def load_runs(requests: int = 50) -> None:
        mark = len(statuses)
        await eventually(lambda: len(statuses) >= mark + requests, what="load")

    runner = asyncio.create_task(paced_load(one, stop))
    await load_runs()
    kids.append(last_kid())
    await edit(old, new)  # 1. add the new key second: published, not signing
    # 2. wait for Gini's cache to expire: its next fetch brings the new key
    await eventually(lambda: new_kid in verifier.cache.keys, what="Gini fetching the new key")
    await load_runs()
    kids.append(last_kid())
    await edit(new, old)  # 3. move it first: it signs
    await load_runs()
    kids.append(last_kid())
    await edit(new)  # 4. later, remove the old key
    fetches = verifier.cache.fetches
    await eventually(lambda: verifier.cache.fetches > fetches, what="Gini refetching the keys")
    await load_runs()
    kids.append(last_kid())
    stop.set()
    await runner

    assert kids == [old_kid, old_kid, new_kid, new_kid]
    assert len(statuses) >= 200
    failed = [s for s in statuses if s != 200]
    assert failed == [], f"{len(failed)} of {len(statuses)} requests failed"
    assert sample(proxy, "gini_proxy_jwt_rejected_total") == 0
    jwks, _ = await fetch_jwks(proxy)
    assert [k["kid"] for k in jwks["keys"]] == [new_kid]
    assert sim.config.jwt is not None
    assert sim.config.jwt.cache.fetches >= 4


async def test_a_broken_key_file_is_never_applied_on_reload(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    key = ec_pem()
    volume = SecretVolume(tmp_path / "jwt-secret")
    volume.write(keys=key)
    proxy = await jwt_proxy(
        start_proxy,
        sim,
        tmp_path,
        key,
        jwt={"signing_keys": [{"file": str(volume.path("keys"))}]},
        reload_interval_seconds=0,
    )
    kid = load_signing_key(key, "ES256").kid
    for broken in ("", rsa_pem(2048), key[: len(key) // 2]):  # empty, wrong type, truncated
        volume.write(keys=broken)
        assert (await proxy.services.reloader.reload())["jwt.signing_keys"] == "error"
        jwks, _ = await fetch_jwks(proxy)
        assert [k["kid"] for k in jwks["keys"]] == [kid]
        async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
            assert answer.status == 200


# --- a rotated client secret (issue 20, item 1) ----------------------------------------------

NEW_SECRET = "rotated-client-secret-jwt-7f31"


async def secret_claim_proxy(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> tuple[RunningProxy, SecretVolume]:
    """jwt mode with a client-secret claim, `client.secret` read from a Secret volume."""
    volume = SecretVolume(tmp_path / "client-secret")
    volume.write(client_secret=CLIENT_SECRET)
    proxy = await jwt_proxy(
        start_proxy,
        sim,
        tmp_path,
        ec_pem(),
        jwt={"claims": {"client_secret": "x-client-secret"}},
        settings={"client_secret_claim": "x-client-secret"},
        client={"auth": "jwt", "secret": {"file": str(volume.path("client_secret"))}},
        reload_interval_seconds=0,
    )
    return proxy, volume


async def secret_in_jwt(proxy: RunningProxy, sim: GiniSimulator, user: str) -> str | None:
    """Flow 1 for `user`: the client-secret claim of the JWT Gini got, or None when refused."""
    async with proxy.client.get(proxy.url + "/documents", headers={"X-User-Id": user}) as answer:
        await answer.read()
        if answer.status != 200:
            return None
    claims = jwt.decode(sent_jwt(sim), options={"verify_signature": False})
    secret = claims["x-client-secret"]
    assert isinstance(secret, str)
    return secret


async def test_a_verified_client_secret_swap_reaches_every_jwt(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    proxy, volume = await secret_claim_proxy(start_proxy, sim, tmp_path)
    assert await secret_in_jwt(proxy, sim, "cached@example.com") == CLIENT_SECRET
    sim.accept_client_secrets(CLIENT_SECRET, NEW_SECRET)  # 1. at Gini: both
    volume.write(client_secret=NEW_SECRET)  # 2. in the Secret
    assert (await proxy.services.reloader.reload())["client.secret"] == "applied"
    # A user whose JWT was cached before the swap, and one seen for the first time.
    assert await secret_in_jwt(proxy, sim, "cached@example.com") == NEW_SECRET
    assert await secret_in_jwt(proxy, sim, "new@example.com") == NEW_SECRET
    sim.accept_client_secrets(NEW_SECRET)  # 3. at Gini: the old one revoked
    for user in ("cached@example.com", "new@example.com", "later@example.com"):
        assert await secret_in_jwt(proxy, sim, user) == NEW_SECRET
    assert sample(proxy, "gini_proxy_jwt_rejected_total") == 0


async def test_gini_refusing_the_old_secret_in_a_jwt_applies_the_waiting_one(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    # SIGHUP only: nothing but Gini's 401 to a JWT can make the proxy look at the file again.
    proxy, volume = await secret_claim_proxy(start_proxy, sim, tmp_path)
    assert await secret_in_jwt(proxy, sim, "alice@example.com") == CLIENT_SECRET
    volume.write(client_secret=NEW_SECRET)
    assert (await proxy.services.reloader.reload())["client.secret"] == "rejected"  # too early
    sim.accept_client_secrets(NEW_SECRET)  # Gini switched and revoked the old secret
    assert await secret_in_jwt(proxy, sim, "alice@example.com") is None  # a 401

    async def recovered() -> bool:
        return await secret_in_jwt(proxy, sim, "alice@example.com") == NEW_SECRET

    await eventually(recovered)
    assert await secret_in_jwt(proxy, sim, "bob@example.com") == NEW_SECRET
    applied = {"secret": "client.secret", "result": "applied"}
    assert sample(proxy, "gini_proxy_secret_reloads_total", **applied) == 1
