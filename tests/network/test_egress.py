"""`upstream.egress_proxy`: every Gini call through an authenticating CONNECT proxy."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import build_config
from proxy.config.egress import parse_egress_proxy
from proxy.config.reader import ConfigError, Reader
from proxy.sandbox import GiniSimulator

from ..conftest import CLIENT_ID, CLIENT_SECRET, USER, RunningProxy, StartProxy, config_data, merge
from .support import (
    PROXY_PASSWORD,
    PROXY_USER,
    ConnectProxy,
    Pki,
    run_flows,
)


@pytest.fixture
async def egress() -> AsyncIterator[ConnectProxy]:
    proxy = ConnectProxy()
    await proxy.start()
    yield proxy
    await proxy.close()


def via(pki: Pki, egress: ConnectProxy, password: str = PROXY_PASSWORD) -> dict[str, Any]:
    return {
        "upstream": {
            "tls": {"ca_file": str(pki.ca_file)},
            "egress_proxy": {"url": egress.url, "username": PROXY_USER, "password": password},
        }
    }


def errors(proxy: RunningProxy, reason: str, upstream: str = "pay_api") -> float:
    labels = {"upstream": upstream, "reason": reason}
    return proxy.metrics.registry.get_sample_value("gini_proxy_upstream_errors_total", labels) or 0


async def test_flows_1_to_4_through_the_egress_proxy_22_requests_at_most_6_tunnels(
    start_proxy: StartProxy, sim: GiniSimulator, pki: Pki, egress: ConnectProxy
) -> None:
    proxy = await start_proxy(**via(pki, egress))
    sent = await run_flows(proxy, sim, pki.client_context())
    while sent < 22:
        path = "/paymentProviders" if sent % 2 else "/_proxy/tokens/derived"
        method = proxy.client.get if sent % 2 else proxy.client.post
        async with method(proxy.url + path, headers=USER) as response:
            assert response.status == 200
            await response.read()
        sent += 1
    print(f"tunnels for {sent} requests: {egress.tunnels}")
    assert 1 <= egress.tunnels <= 6
    assert egress.refused == 0
    hosts = {sim.pay_api_url.removeprefix("https://"), sim.user_center_url.removeprefix("https://")}
    assert set(egress.targets) == hosts  # both Pay API and User Center went through it


async def test_credentials_from_https_proxy_in_the_environment(
    start_proxy: StartProxy,
    sim: GiniSimulator,
    pki: Pki,
    egress: ConnectProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address = egress.url.removeprefix("http://")
    monkeypatch.setenv("HTTPS_PROXY", f"http://{PROXY_USER}:{PROXY_PASSWORD}@{address}")
    proxy = await start_proxy(
        upstream={"tls": {"ca_file": str(pki.ca_file)}, "egress_proxy": {"url": "${HTTPS_PROXY}"}}
    )
    await run_flows(proxy, sim, pki.client_context())
    assert egress.tunnels >= 1
    async with proxy.client.get(proxy.admin_url + "/status") as response:
        status = await response.text()
    assert PROXY_PASSWORD not in status
    assert f'"egress_proxy": "http://{address}"' in status


async def test_a_wrong_proxy_password_is_a_json_error_and_nothing_reaches_gini(
    start_proxy: StartProxy,
    sim: GiniSimulator,
    pki: Pki,
    egress: ConnectProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "wrong-password-99c2"
    proxy = await start_proxy(**via(pki, egress, password=wrong))
    caplog.set_level(logging.DEBUG)
    bodies = []
    for method, path in (
        ("GET", "/documents"),
        ("POST", "/_proxy/tokens/derived"),
        ("POST", "/_proxy/tokens/anonymous"),
    ):
        async with proxy.client.request(method, proxy.url + path, headers=USER) as response:
            text = await response.text()
            assert response.status == 502, text
            body = await response.json()
            assert body["error"] == "bad_gateway"
            assert "egress proxy" in body["message"]
            bodies.append(text)
    assert sim.state.requests == type(sim.state.requests)()  # nothing reached Gini
    assert egress.tunnels == 0
    assert egress.refused == 3  # no retries of a refused credential
    failures = [r for r in caplog.records if r.name == "proxy.upstream"]
    # One failure episode per upstream: the second pay_api refusal is counted, not logged again.
    assert [r.__dict__["upstream"] for r in failures] == ["pay_api", "user_center"]
    assert all("egress proxy refused the proxy credentials" in r.getMessage() for r in failures)
    assert errors(proxy, "proxy_auth") == 2
    assert errors(proxy, "proxy_auth", "user_center") == 1
    async with proxy.client.get(proxy.admin_url + "/status") as response:
        status = await response.text()
    async with proxy.client.get(proxy.admin_url + "/metrics") as response:
        metrics = await response.text()
    everything = "\n".join([*bodies, status, metrics, caplog.text])
    assert wrong not in everything
    assert wrong in proxy.config.secrets()  # fed to the log redactor as well


async def test_an_unreachable_egress_proxy_is_503(
    start_proxy: StartProxy, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    closed = ConnectProxy()
    await closed.start()
    url = closed.url
    await closed.close()
    proxy = await start_proxy(
        upstream={"tls": {"ca_file": str(pki.ca_file)}, "egress_proxy": {"url": url}}
    )
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
        assert response.status == 503
        assert (await response.json())["error"] == "upstream_unavailable"
    (record,) = [r for r in caplog.records if r.name == "proxy.upstream"]
    assert "egress proxy cannot be reached" in record.getMessage()
    assert errors(proxy, "proxy_connect") == 1


async def test_a_dns_failure_is_named(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy(upstream={"pay_api": "https://gini-pay-api.invalid"})
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
        assert response.status == 503
        assert (await response.json())["error"] == "upstream_unavailable"
    (record,) = [r for r in caplog.records if r.name == "proxy.upstream"]
    assert "DNS" in record.getMessage()
    assert errors(proxy, "dns") == 1


# -- configuration ---------------------------------------------------------------------------


def load(tmp_path: Path, egress: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    class Urls:
        pay_api_url = "https://pay-api.gini.net"
        user_center_url = "https://user.gini.net"

    data = merge(config_data(Urls(), tmp_path), {"upstream": {"egress_proxy": egress}})  # type: ignore[arg-type]
    return build_config(data, env or {}, tmp_path)


def problems(tmp_path: Path, egress: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, egress, env)
    return "\n".join(caught.value.problems)


def test_url_credentials_are_split_off(tmp_path: Path) -> None:
    config = load(tmp_path, {"url": "http://svc%40corp:p%3Ass@egress.internal:3128"})
    egress = config.upstream.egress_proxy
    assert egress.url == "http://egress.internal:3128"
    assert egress.username == "svc@corp"
    assert egress.password.value == "p:ss"
    assert "p:ss" not in repr(config.upstream)
    assert "p:ss" in config.secrets()


def test_an_unset_https_proxy_means_no_egress_proxy(tmp_path: Path) -> None:
    assert load(tmp_path, {"url": "${HTTPS_PROXY:-}"}).upstream.egress_proxy is None
    config = load(tmp_path, {"url": "${HTTPS_PROXY:-}"}, {"HTTPS_PROXY": "http://10.0.0.1:3128"})
    assert config.upstream.egress_proxy.url == "http://10.0.0.1:3128"


def test_egress_proxy_problems_never_quote_the_password(tmp_path: Path) -> None:
    text = problems(
        tmp_path,
        {"url": "https://u:secretpw@egress:3128/path", "username": "x", "password": "y"},
    )
    assert "upstream.egress_proxy.url: must be http://HOST:PORT" in text
    assert "must not contain a path" in text
    assert "either in the url or as username/password" in text
    assert "secretpw" not in text
    assert "secretpw" not in problems(tmp_path, {"url": "http://u:secretpw@egress:99999"})
    assert "username: is required when a password is set" in problems(
        tmp_path, {"url": "http://egress:3128", "password": "p"}
    )


_CREDENTIAL = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30
).filter(lambda text: text.strip() == text)
# Marked, so "never appears" is not defeated by a one-letter password found in any text.
_PASSWORD = _CREDENTIAL.map(lambda text: f"pw~{text}~pw")


@given(username=_CREDENTIAL, password=_PASSWORD, port=st.integers(1, 65535))
def test_any_url_credentials_round_trip_and_never_stay_in_the_url(
    username: str, password: str, port: int
) -> None:
    url = f"http://{quote(username, safe='')}:{quote(password, safe='')}@egress.internal:{port}"
    reader = Reader({}, Path("."))
    egress = parse_egress_proxy(reader, {"egress_proxy": {"url": url}})
    assert reader.problems == []
    assert egress is not None
    assert egress.url == f"http://egress.internal:{port}"
    assert egress.username == username
    assert egress.password is not None
    assert egress.password.value == password
    assert password not in repr(egress)


@given(password=_PASSWORD, junk=st.sampled_from([":99999", ":x", "/path", "?q=1", "#f"]))
def test_problems_with_a_url_never_quote_its_password(password: str, junk: str) -> None:
    url = f"http://svc:{quote(password, safe='')}@egress.internal{junk}"
    reader = Reader({}, Path("."))
    parse_egress_proxy(reader, {"egress_proxy": {"url": url}})
    assert reader.problems
    assert all(quote(password, safe="") not in p and password not in p for p in reader.problems)


async def test_a_rotated_egress_password_is_used_for_new_tunnels_without_a_restart(
    start_proxy: StartProxy, sim: GiniSimulator, pki: Pki, egress: ConnectProxy, tmp_path: Path
) -> None:
    from ..secret_volume import SecretVolume

    volume = SecretVolume(tmp_path / "egress-secret")
    volume.write(password=PROXY_PASSWORD)
    settings = via(pki, egress)
    settings["upstream"]["egress_proxy"]["password"] = {"file": str(volume.path("password"))}
    proxy = await start_proxy(**settings, reload_interval_seconds=0)
    async with proxy.client.get(proxy.url + "/paymentProviders", headers=USER) as response:
        assert response.status == 200  # a Pay API tunnel, opened with the old password
    egress.password = "rotated-egress-password-42"
    volume.write(password=egress.password)
    results = await proxy.services.reloader.reload()
    assert results["upstream.egress_proxy.password"] == "applied"
    # Flow 4 needs the User Center: a new tunnel, which must carry the new password.
    async with proxy.client.post(proxy.url + "/_proxy/tokens/anonymous", headers=USER) as answer:
        assert answer.status == 200, await answer.text()
    assert egress.refused == 0
    assert any(sim.user_center_url.removeprefix("https://") == t for t in egress.targets)


# -- plain-HTTP upstreams behind the egress proxy ----------------------------------------------


async def test_plain_http_upstreams_send_the_proxy_credentials_with_each_request(
    start_proxy: StartProxy, egress: ConnectProxy
) -> None:
    # No CONNECT for an http:// upstream: each request itself must carry Proxy-Authorization.
    async with GiniSimulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as plain:
        proxy = await start_proxy(**plain_via(plain, egress))
        for method, path in FLOWS:
            async with proxy.client.request(method, proxy.url + path, headers=USER) as answer:
                assert answer.status == 200, await answer.text()
        assert egress.refused == 0
        assert egress.tunnels == 0
        sent = [request.split(" ", 1)[1] for request in egress.forwarded]
        assert any(url.startswith(plain.pay_api_url + "/documents") for url in sent)
        assert any(url.startswith(plain.user_center_url + "/oauth/token") for url in sent)
        at_gini = [*plain.state.requests_of("pay"), *plain.state.requests_of("uc")]
        assert len(at_gini) == len(sent)
        for record in at_gini:  # the egress proxy's credentials stop at the egress proxy
            assert "proxy-authorization" not in {name.lower() for name, _ in record.headers}


async def test_plain_http_upstream_with_a_wrong_proxy_password_is_a_json_error(
    start_proxy: StartProxy, egress: ConnectProxy
) -> None:
    async with GiniSimulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as plain:
        proxy = await start_proxy(**plain_via(plain, egress, password="wrong-password-5ab1"))
        for method, path in FLOWS:
            async with proxy.client.request(method, proxy.url + path, headers=USER) as answer:
                body = await answer.json()
                assert answer.status == 502, body
                assert "Proxy-Authenticate" not in answer.headers
            assert body["error"] == "bad_gateway"
            assert "egress proxy" in body["message"]
        assert egress.refused == 3  # a refused credential is not retried
        assert not plain.state.requests_of("pay")
        assert not plain.state.requests_of("uc")
        assert errors(proxy, "proxy_auth") == 2
        assert errors(proxy, "proxy_auth", "user_center") == 1


FLOWS = (
    ("GET", "/documents"),
    ("POST", "/_proxy/tokens/derived"),
    ("POST", "/_proxy/tokens/anonymous"),
)


def plain_via(
    plain: GiniSimulator, egress: ConnectProxy, password: str = PROXY_PASSWORD
) -> dict[str, Any]:
    return {
        "upstream": {
            "pay_api": plain.pay_api_url,
            "user_center": plain.user_center_url,
            "egress_proxy": {"url": egress.url, "username": PROXY_USER, "password": password},
        }
    }
