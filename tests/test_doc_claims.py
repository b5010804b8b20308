"""Claims of the user-facing docs that were once false, held to the code.

- configuration.md (`identity.header`): spaces and tabs around the id are not an error. HTTP
  strips them while parsing the header, so the proxy sees the bare id: 200, the same
  identifier. Other whitespace (a no-break space) reaches the proxy: 400 `invalid_user`.
- operations.md (section 5): admin answers carry no request id, except the JWKS route's.
- README.md: the coverage floor it states is the one in force.
- operations.md (response cache metrics): with the `redis` backend the entries gauge is
  exported, and stays 0 (the proxy does not count a shared Redis).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis.asyncio

from tests.conftest import REDIS_URL, RunningProxy, StartProxy


async def _raw_status(url: str, head: str) -> int:
    """The status of one request sent byte for byte (a client library might tidy the head)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head.encode("utf-8"))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    return int(line.split()[1])


@pytest.mark.parametrize("sent", ["  alice", "alice  ", "\talice\t", " alice "])
async def test_whitespace_around_the_user_id_is_stripped_by_http(
    proxy: RunningProxy, sent: str
) -> None:
    plain = "GET /documents HTTP/1.1\r\nHost: p\r\nX-User-Id: alice\r\nConnection: close\r\n\r\n"
    padded = plain.replace("X-User-Id: alice", f"X-User-Id:{sent}")
    assert await _raw_status(proxy.url, plain) == 200
    assert await _raw_status(proxy.url, padded) == 200
    # One memoised derivation: both requests acted as the same user, "alice".
    assert len(proxy.services.deriver) == 1


@pytest.mark.parametrize("sent", ["\u00a0alice", "alice\u2003", "\u3000alice"])
async def test_other_whitespace_around_the_user_id_is_refused(
    proxy: RunningProxy, sent: str
) -> None:
    # Only spaces and tabs are HTTP's whitespace; a no-break or ideographic space reaches the
    # proxy, which refuses it rather than guess which user was meant.
    head = f"GET /documents HTTP/1.1\r\nHost: p\r\nX-User-Id: {sent}\r\nConnection: close\r\n\r\n"
    assert await _raw_status(proxy.url, head) == 400


async def test_only_the_jwks_route_of_the_admin_listener_carries_a_request_id(
    proxy: RunningProxy,
) -> None:
    for path in ("/healthz", "/readyz", "/status", "/metrics"):
        async with proxy.client.get(proxy.admin_url + path) as response:
            assert response.status == 200
            assert "X-Request-Id" not in response.headers, path
    # Without a jwt section the JWKS route answers the contract's 404, with an id.
    async with proxy.client.get(proxy.admin_url + "/.well-known/jwks.json") as response:
        assert response.status == 404
        body = await response.json()
    assert body["requestId"] == response.headers["X-Request-Id"]


@pytest.mark.redis
async def test_the_entries_gauge_is_exported_as_zero_with_redis(start_proxy: StartProxy) -> None:
    try:
        client = redis.asyncio.from_url(REDIS_URL, socket_connect_timeout=1)
        await client.ping()
        await client.aclose()
    except (OSError, redis.exceptions.RedisError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_URL} is unreachable: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    proxy = await start_proxy(
        identity={"hmac_key": secrets.token_hex(32)},  # keys of their own in a shared Redis
        response_cache={"routes": ["/configurations"], "backend": REDIS_URL},
    )
    async with proxy.client.get(
        proxy.url + "/configurations", headers={"X-User-Id": "alice"}
    ) as response:
        assert response.status == 200
    assert proxy.services.response_cache is not None
    await proxy.services.response_cache.drain()
    async with proxy.client.get(proxy.admin_url + "/metrics") as response:
        text = await response.text()
    assert "\ngini_proxy_response_cache_entries 0.0\n" in text


def test_the_readme_states_the_coverage_floor_in_force() -> None:
    root = Path(__file__).resolve().parents[1]
    floor = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "coverage"
    ]["report"]["fail_under"]
    assert f"`fail_under = {floor}`" in (root / "README.md").read_text(encoding="utf-8")
