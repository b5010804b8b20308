"""The admin listener: health, readiness, status, and a Prometheus exposition that scrapes."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import random
import shutil
import string
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy import __version__
from proxy.identity import identity_key_id

from .conftest import HMAC_KEY, USER, RunningProxy, StartProxy, eventually

CONTRACT_METRICS = (
    "gini_proxy_requests_total",
    "gini_proxy_request_duration_seconds",
    "gini_proxy_upstream_request_duration_seconds",
    "gini_proxy_upstream_errors_total",
    "gini_proxy_tokens_issued_total",
    "gini_proxy_token_fetch_errors_total",
    "gini_proxy_token_cache_entries",
    "gini_proxy_anonymous_users_created_total",
    "gini_proxy_in_flight_requests",
    "gini_proxy_build_info",
)


def need_tool(name: str) -> str:
    """The tool's path; skip (or, under CI, fail) when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (scripts/test installs it with apt-get)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


async def scrape(proxy: RunningProxy) -> str:
    async with proxy.client.get(proxy.admin_url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        return await response.text()


async def test_liveness_and_readiness(proxy: RunningProxy) -> None:
    async with proxy.client.get(proxy.admin_url + "/healthz") as response:
        assert response.status == 200
    async with proxy.client.get(proxy.admin_url + "/readyz") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ready"
    proxy.services.lifecycle.draining = True
    async with proxy.client.get(proxy.admin_url + "/readyz") as response:
        assert response.status == 503
        body = await response.json()
        # The contract's error body, built by the one function every listener uses.
        assert body == {
            "error": "draining",
            "message": "The proxy is shutting down; retry on another instance.",
            "requestId": response.headers["X-Request-Id"],
        }
        assert response.headers["Retry-After"] == "0"
    async with proxy.client.get(proxy.admin_url + "/healthz") as response:
        assert response.status == 200  # draining is not dead


async def test_status_page(proxy: RunningProxy) -> None:
    async with proxy.client.post(proxy.url + "/_proxy/tokens/derived", headers=USER) as response:
        assert response.status == 200
    async with proxy.client.get(proxy.admin_url + "/status") as response:
        status = await response.json()
    assert status["version"] == __version__
    assert status["upstreams"]["pay_api"] == proxy.config.upstream.pay_api
    assert status["in_flight"] == 0
    assert status["token_caches"]["derived"]["entries"] == 1
    assert status["token_caches"]["derived"]["last_fetch_error"] is None
    assert status["store"] == "sqlite"


async def test_status_shows_the_connection_limits_in_force(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(max_connections=50, admin_max_connections=7)
    async with proxy.client.get(proxy.admin_url + "/status") as response:
        connections = (await response.json())["connections"]
    assert connections["max_connections"] == connections["configured_max_connections"] == 50
    assert connections["admin_max_connections"] == 7
    assert connections["admin_open"] >= 1  # this very request's connection
    assert connections["open"] == 0


@pytest.mark.parametrize(("method", "path", "status"), [("GET", "/nothing", 404),
                                                        ("POST", "/healthz", 405)])  # fmt: skip
async def test_the_admin_routers_refusals_are_contract_errors(
    proxy: RunningProxy, method: str, path: str, status: int
) -> None:
    async with proxy.client.request(method, proxy.admin_url + path) as response:
        assert response.status == status
        body = await response.json()
        assert body["requestId"] == response.headers["X-Request-Id"]
        assert body["error"] == ("not_found" if status == 404 else "method_not_allowed")
        assert response.headers["Connection"] == "close"
        assert "Retry-After" not in response.headers
    if status == 405:
        assert "GET" in response.headers["Allow"]


async def test_status_names_the_last_token_fetch_error(proxy: RunningProxy, sim: object) -> None:
    sim.state.reject_client = True  # type: ignore[attr-defined]
    async with proxy.client.post(proxy.url + "/_proxy/tokens/derived", headers=USER) as response:
        assert response.status == 502
    async with proxy.client.get(proxy.admin_url + "/status") as response:
        status = await response.json()
    assert status["token_caches"]["derived"]["last_fetch_error"] == "UpstreamRejected"


async def test_every_contract_metric_is_exposed(proxy: RunningProxy) -> None:
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
        assert response.status == 200
    text = await scrape(proxy)
    for name in CONTRACT_METRICS:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    key_id = identity_key_id(HMAC_KEY.encode())
    build_info = f'gini_proxy_build_info{{identity_key_id="{key_id}",version="{__version__}"}} 1.0'
    assert build_info in text
    assert 'gini_proxy_requests_total{method="GET",route="/documents",status="200"} 1.0' in text


async def test_labels_stay_bounded_and_never_hold_user_data(proxy: RunningProxy) -> None:
    rng = random.Random(7)
    users = [f"user-{n}@example.com" for n in range(20)]
    for n in range(150):
        segments = [
            "".join(rng.choices(string.ascii_letters + string.digits, k=8))
            for _ in range(rng.randint(1, 4))
        ]
        path = "/" + "/".join(segments) if n % 3 else f"/documents/{segments[0]}"
        method = rng.choice(["GET", "POST", "DELETE", "BREW"])
        async with proxy.client.request(
            method, proxy.url + path, headers={"X-User-Id": users[n % 20]}
        ) as r:
            await r.read()
    text = await scrape(proxy)
    request_lines = [
        line for line in text.splitlines() if line.startswith("gini_proxy_requests_total{")
    ]
    routes = {line.split('route="')[1].split('"')[0] for line in request_lines}
    assert routes <= {"other", "/documents/{id}"}
    methods = {line.split('method="')[1].split('"')[0] for line in request_lines}
    assert methods <= {"GET", "POST", "DELETE", "other"}
    for user in users:
        assert user not in text
        assert hmac.new(HMAC_KEY.encode(), user.encode(), hashlib.sha256).hexdigest() not in text


async def test_upstream_latency_is_measured_apart(proxy: RunningProxy) -> None:
    async with proxy.client.get(proxy.url + "/_sandbox/echo?delay=0.2", headers=USER) as response:
        assert response.status == 200
    registry = proxy.metrics.registry
    upstream = registry.get_sample_value(
        "gini_proxy_upstream_request_duration_seconds_sum", {"upstream": "pay_api"}
    )
    total = registry.get_sample_value(
        "gini_proxy_request_duration_seconds_sum", {"method": "GET", "route": "other"}
    )
    assert upstream is not None
    assert total is not None
    assert 0.2 <= upstream <= total


async def test_promtool_accepts_the_exposition(proxy: RunningProxy, tmp_path: Path) -> None:
    promtool = need_tool("promtool")
    async with proxy.client.post(proxy.url + "/_proxy/tokens/anonymous", headers=USER) as response:
        assert response.status == 200
    text = await scrape(proxy)
    result = subprocess.run(  # noqa: ASYNC221 - a short local tool run
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
async def test_a_real_prometheus_scrapes_the_admin_listener(
    proxy: RunningProxy, tmp_path: Path
) -> None:
    binary = need_tool("prometheus")
    admin = proxy.admin_url.removeprefix("http://")
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs: [{job_name: gini-auth-proxy, "
        f"static_configs: [{{targets: ['{admin}']}}]}}]\n"
    )
    process = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        query = f"http://127.0.0.1:{port}/api/v1/query?query=gini_proxy_build_info"
        result: list[Any] = []
        async with aiohttp.ClientSession() as client:

            async def scraped() -> bool:
                nonlocal result
                try:
                    async with client.get(query) as response:
                        result = (await response.json())["data"]["result"]
                except (aiohttp.ClientError, KeyError):
                    result = []
                return bool(result)

            await eventually(scraped, within=30, what="a scrape of the admin listener")
        assert result[0]["metric"]["version"] == __version__
    finally:
        process.terminate()
        await process.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
