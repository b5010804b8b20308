"""Flows 2-4 end to end: token vending through the proxy, against the Gini simulator."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from typing import Any

import pytest

from proxy.sandbox import GiniSimulator

from .conftest import CLIENT_ID, CLIENT_SECRET, HMAC_KEY, USER, RunningProxy, StartProxy

DERIVED = "/_proxy/tokens/derived"
ANONYMOUS = "/_proxy/tokens/anonymous"
ERASE = "/_proxy/users/anonymous"


async def vend(
    proxy: RunningProxy, path: str, user: str = "alice@example.com", status: int = 200
) -> Any:
    async with proxy.client.post(proxy.url + path, headers={"X-User-Id": user}) as response:
        body = await response.json()
        assert response.status == status, body
        if status == 200:
            assert response.headers["Cache-Control"] == "no-store"
            assert response.headers["Pragma"] == "no-cache"
        return body


async def gini_get(proxy: RunningProxy, sim: GiniSimulator, path: str, token: str) -> Any:
    async with proxy.client.get(
        sim.pay_api_url + path, headers={"Authorization": f"Bearer {token}"}
    ) as r:
        assert r.status == 200, await r.text()
        return await r.json(content_type=None)


def sample(proxy: RunningProxy, name: str, **labels: str) -> float:
    return proxy.metrics.registry.get_sample_value(name, labels) or 0.0


# -- flows 2 and 3 -------------------------------------------------------------------------


async def test_derived_token_has_the_contract_shape(proxy: RunningProxy) -> None:
    body = await vend(proxy, DERIVED)
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert isinstance(body["expires_in"], int)
    assert 3500 < body["expires_in"] <= 3599


async def test_device_token_and_backend_act_as_one_gini_user(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    async with proxy.client.post(
        proxy.url + "/documents?filename=a.pdf",
        data=b"%PDF backend upload",
        headers={**USER, "Content-Type": "application/pdf"},
    ) as response:
        assert response.status == 201
        uploaded = (await response.json(content_type=None))["id"]
    token = (await vend(proxy, DERIVED))["access_token"]
    listing = await gini_get(proxy, sim, "/documents", token)
    assert [d["id"] for d in listing["documents"]] == [uploaded]
    other = (await vend(proxy, DERIVED, user="bob"))["access_token"]
    assert (await gini_get(proxy, sim, "/documents", other))["documents"] == []
    login = next(r for r in sim.state.requests if r.path == "/login")
    headers = {k.lower(): v for k, v in login.headers}
    expected = hmac.new(HMAC_KEY.encode(), b"alice@example.com", hashlib.sha256).hexdigest()
    assert headers["x-user-identifier"] == expected
    assert headers["authorization"].startswith("Basic ")


async def test_derived_token_is_cached_and_single_flight(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    sim.state.pay_api_delay = 0.2
    bodies = await asyncio.gather(*(vend(proxy, DERIVED) for _ in range(30)))
    assert sim.state.logins == 1
    assert len({b["access_token"] for b in bodies}) == 1
    await vend(proxy, DERIVED)
    assert sim.state.logins == 1
    assert sample(proxy, "gini_proxy_tokens_issued_total", flow="derived", source="cache") == 1
    assert sample(proxy, "gini_proxy_tokens_issued_total", flow="derived", source="upstream") == 30
    assert sample(proxy, "gini_proxy_token_cache_entries", flow="derived") == 1


async def test_derived_token_refused_client_is_502_upstream_rejected(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    sim.state.reject_client = True
    body = await vend(proxy, DERIVED, status=502)
    assert body["error"] == "upstream_rejected"
    assert CLIENT_SECRET not in json.dumps(body)
    assert (
        sample(
            proxy, "gini_proxy_token_fetch_errors_total", flow="derived", reason="upstream_rejected"
        )
        == 1
    )


async def test_transient_gini_errors_are_retried(proxy: RunningProxy, sim: GiniSimulator) -> None:
    sim.state.fail_next(2, status=503, app="pay")
    await vend(proxy, DERIVED)
    assert sim.state.logins == 1


async def test_persistent_gini_errors_become_503(proxy: RunningProxy, sim: GiniSimulator) -> None:
    sim.state.fail_next(10, status=503, app="pay")
    body = await vend(proxy, DERIVED, status=503)
    assert body["error"] == "upstream_unavailable"
    assert (
        sample(proxy, "gini_proxy_upstream_errors_total", upstream="pay_api", reason="status_5xx")
        == 3
    )


async def test_gini_unreachable_for_tokens_is_503(
    start_proxy: StartProxy, unused_tcp_port: int
) -> None:
    proxy = await start_proxy(upstream={"pay_api": f"http://127.0.0.1:{unused_tcp_port}"})
    assert (await vend(proxy, DERIVED, status=503))["error"] == "upstream_unavailable"


async def test_token_endpoints_validate_method_and_identity(proxy: RunningProxy) -> None:
    async with proxy.client.get(proxy.url + DERIVED, headers=USER) as response:
        assert response.status == 405
        assert (await response.json())["error"] == "method_not_allowed"
    async with proxy.client.post(proxy.url + DERIVED) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "missing_user"


# -- flow 4 --------------------------------------------------------------------------------


async def test_anonymous_user_is_created_once_and_acts_at_gini(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    token = (await vend(proxy, ANONYMOUS))["access_token"]
    assert sim.state.users_created == 1
    (email,) = sim.state.user_emails()
    assert email.endswith("@anon.example.com")
    assert (await gini_get(proxy, sim, "/documents", token))["documents"] == []
    again = (await vend(proxy, ANONYMOUS))["access_token"]
    assert again == token
    assert sim.state.user_logins == 1
    await vend(proxy, ANONYMOUS, user="bob")
    assert sim.state.users_created == 2
    assert sim.state.client_tokens_issued == 1  # the client token is cached too
    assert sample(proxy, "gini_proxy_anonymous_users_created_total") == 2


async def test_thirty_concurrent_first_requests_create_one_user(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    sim.state.user_center_delay = 0.1
    bodies = await asyncio.gather(*(vend(proxy, ANONYMOUS) for _ in range(30)))
    assert sim.state.users_created == 1
    assert len({b["access_token"] for b in bodies}) == 1


async def test_same_user_after_restart(start_proxy: StartProxy, sim: GiniSimulator) -> None:
    first = await start_proxy()
    await vend(first, ANONYMOUS)
    second = await start_proxy()  # a new process: empty caches, same SQLite store
    await vend(second, ANONYMOUS)
    assert sim.state.users_created == 1
    assert sim.state.user_logins == 2


async def test_user_lost_at_gini_is_created_anew(proxy: RunningProxy, sim: GiniSimulator) -> None:
    await vend(proxy, ANONYMOUS)
    (email,) = sim.state.user_emails()
    sim.state.delete_user(email)
    proxy.services.token_caches["anonymous"].forget(_key("alice@example.com"))
    token = (await vend(proxy, ANONYMOUS))["access_token"]
    assert sim.state.users_created == 2
    (new_email,) = sim.state.user_emails()
    assert new_email != email
    await gini_get(proxy, sim, "/documents", token)


async def test_erasure_forgets_credentials_and_tokens(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    token = (await vend(proxy, ANONYMOUS))["access_token"]
    async with proxy.client.delete(proxy.url + ERASE, headers=USER) as response:
        assert response.status == 204
    async with proxy.client.delete(proxy.url + ERASE, headers=USER) as response:
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"
    assert proxy.services.store is not None
    assert await proxy.services.store.count() == 0
    fresh = (await vend(proxy, ANONYMOUS))["access_token"]
    assert fresh != token
    assert sim.state.users_created == 2


async def test_pending_row_left_by_a_crash_after_gini_created_the_user(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    store = proxy.services.store
    assert store is not None
    key = _key("alice@example.com")
    pending = await store.claim(key, "crashed-0001@anon.example.com", "stored-before-create")
    sim.state.add_user(pending.email, pending.password)  # Gini has it; we never marked it active
    token = (await vend(proxy, ANONYMOUS))["access_token"]
    assert sim.state.users_created == 0  # no second user: the stored one was logged in
    assert (await store.get(key)) == pending.__class__(
        key, pending.email, pending.password, "active"
    )
    await gini_get(proxy, sim, "/documents", token)
    assert sample(proxy, "gini_proxy_anonymous_users_created_total") == 0


async def test_pending_row_left_by_a_crash_before_gini_saw_it(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    store = proxy.services.store
    assert store is not None
    key = _key("alice@example.com")
    await store.claim(key, "crashed-0002@anon.example.com", "stored-before-create")
    await vend(proxy, ANONYMOUS)
    assert sim.state.user_emails() == ["crashed-0002@anon.example.com"]


async def test_revoked_client_token_is_fetched_again(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    await vend(proxy, ANONYMOUS)
    sim.state.revoke_tokens(CLIENT_ID)
    await vend(proxy, ANONYMOUS, user="bob")
    assert sim.state.client_tokens_issued == 2
    assert sim.state.users_created == 2


async def test_user_center_rejecting_the_client_is_502(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    sim.state.reject_client = True
    body = await vend(proxy, ANONYMOUS, status=502)
    assert body["error"] == "upstream_rejected"


async def test_store_down_fails_flow_4_only(proxy: RunningProxy) -> None:
    assert proxy.services.store is not None
    await proxy.services.store.close()
    assert (await vend(proxy, ANONYMOUS, status=503))["error"] == "store_unavailable"
    await vend(proxy, DERIVED)
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
        assert response.status == 200
    async with proxy.client.get(proxy.admin_url + "/readyz") as response:
        assert response.status == 200  # readiness does not depend on the store


async def test_anonymous_flow_disabled_without_config(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(anonymous=None, store=None)
    assert (await vend(proxy, ANONYMOUS, status=404))["error"] == "not_found"


async def test_tokens_and_passwords_never_reach_the_logs(
    proxy: RunningProxy, sim: GiniSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens = [(await vend(proxy, flow))["access_token"] for flow in (DERIVED, ANONYMOUS)]
    sim.state.delete_user(sim.state.user_emails()[0])
    proxy.services.token_caches["anonymous"].forget(_key("alice@example.com"))
    tokens.append((await vend(proxy, ANONYMOUS))["access_token"])
    sim.state.reject_client = True
    await vend(proxy, DERIVED, user="carol", status=502)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    passwords = [u.password for u in sim.state.users.values()]
    for secret in [*tokens, *passwords, CLIENT_SECRET, HMAC_KEY, "alice@example.com", "carol"]:
        assert secret not in text


def _key(user_id: str) -> str:
    return hmac.new(HMAC_KEY.encode(), user_id.encode(), hashlib.sha256).hexdigest()


async def test_gini_too_slow_for_a_token_is_504(
    start_proxy: StartProxy, sim: GiniSimulator
) -> None:
    proxy = await start_proxy(upstream={"timeout_seconds": 0.3, "max_retries": 0})
    sim.state.pay_api_delay = 1
    assert (await vend(proxy, DERIVED, status=504))["error"] == "upstream_timeout"
