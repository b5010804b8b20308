"""Response cache end to end, on the memory, SQLite and Redis backends."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from proxy.forwarding.cache import SystemClock
from proxy.sandbox import GiniSimulator

from .conftest import REDIS_URL, USER, RunningProxy, StartProxy

BOB = {"X-User-Id": "bob@example.com"}


def redis_reachable() -> None:
    """Skip (or fail under CI=true) when the Redis service is not there."""

    async def ping() -> None:
        client = redis.asyncio.from_url(REDIS_URL, socket_connect_timeout=1)
        try:
            await client.ping()
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except (OSError, redis.exceptions.RedisError) as exc:
        message = f"Redis at {REDIS_URL} is unreachable ({type(exc).__name__})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true: failing instead of skipping")
        pytest.skip(message)


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/cache.db"
    if request.param == "redis":
        redis_reachable()
        return REDIS_URL
    return "memory"


def cache_config(backend: str, routes: list[Any], ttl: int = 60) -> dict[str, Any]:
    # A fresh HMAC key per proxy keeps entries of concurrent test runs in a shared Redis apart.
    return {
        "identity": {"hmac_key": secrets.token_hex(32)},
        "response_cache": {"routes": routes, "ttl_seconds": ttl, "backend": backend},
    }


async def get(
    proxy: RunningProxy, path: str, headers: dict[str, str] | None = None
) -> tuple[Any, Any]:
    async with proxy.client.get(proxy.url + path, headers=headers or USER) as response:
        assert response.status == 200, await response.text()
        body = await response.read()
    # Entries are written in the background: wait for that write, not for a guessed time.
    cache = proxy.services.response_cache
    if cache is not None:
        await cache.drain()
    return response.headers, body


class ShiftedClock(SystemClock):
    """Real time plus a shift the test moves forward, for both of the cache's clocks."""

    def __init__(self) -> None:
        self.shift = 0.0

    def utcnow(self) -> datetime:
        return super().utcnow() + timedelta(seconds=self.shift)

    def monotonic(self) -> float:
        return super().monotonic() + self.shift


def results(proxy: RunningProxy, route: str) -> dict[str, float]:
    registry = proxy.metrics.registry
    return {
        result: registry.get_sample_value(
            "gini_proxy_response_cache_total", {"route": route, "result": result}
        )
        or 0.0
        for result in ("hit", "miss", "bypass", "error")
    }


async def test_hit_is_the_fresh_answer_plus_age(
    start_proxy: StartProxy, sim: GiniSimulator, backend: str
) -> None:
    proxy = await start_proxy(**cache_config(backend, ["/paymentProviders"]))
    fresh_headers, fresh = await get(proxy, "/paymentProviders")
    cached_headers, cached = await get(proxy, "/paymentProviders")
    assert sim.state.payment_provider_calls == 1
    assert fresh_headers["X-Cache"] == "MISS"
    assert cached_headers["X-Cache"] == "HIT"
    assert int(cached_headers["Age"]) >= 0
    assert "Age" not in fresh_headers
    assert cached == fresh
    assert proxy.config.public_url.encode() in cached  # the same rewriting
    assert sim.pay_api_url.encode() not in cached
    volatile = {"x-cache", "age", "x-request-id", "date", "content-length"}

    def strip(headers: Any) -> dict[str, str]:
        return {k.lower(): v for k, v in headers.items() if k.lower() not in volatile}

    assert strip(cached_headers) == strip(fresh_headers)
    assert results(proxy, "/paymentProviders") == {"hit": 1, "miss": 1, "bypass": 0, "error": 0}


async def test_one_users_answer_never_reaches_another(
    start_proxy: StartProxy, sim: GiniSimulator, backend: str
) -> None:
    proxy = await start_proxy(**cache_config(backend, ["/documents"]))
    async with proxy.client.post(
        proxy.url + "/documents?filename=a.pdf",
        data=b"%PDF alice",
        headers={**USER, "Content-Type": "application/pdf"},
    ) as response:
        assert response.status == 201
    _, alice = await get(proxy, "/documents")
    bob_headers, bob = await get(proxy, "/documents", BOB)
    assert b"a.pdf" in alice
    assert b"a.pdf" not in bob
    assert bob_headers["X-Cache"] == "MISS"
    again, _ = await get(proxy, "/documents")
    assert again["X-Cache"] == "HIT"


async def test_shared_routes_serve_every_user(
    start_proxy: StartProxy, sim: GiniSimulator, backend: str
) -> None:
    routes = [{"path": "/paymentProviders/{id}", "shared": True}]
    proxy = await start_proxy(**cache_config(backend, routes))
    _, listing = await get(proxy, "/paymentProviders")
    provider = json.loads(listing)[0]["id"]
    await get(proxy, f"/paymentProviders/{provider}")
    headers, _ = await get(proxy, f"/paymentProviders/{provider}", BOB)
    assert headers["X-Cache"] == "HIT"


async def test_entries_expire(start_proxy: StartProxy, sim: GiniSimulator, backend: str) -> None:
    proxy = await start_proxy(**cache_config(backend, ["/paymentProviders"], ttl=1))
    assert proxy.services.response_cache is not None
    clock = proxy.services.response_cache.clock = ShiftedClock()
    await get(proxy, "/paymentProviders")
    # Time moves on the cache's clock instead of the wall. Memory and SQLite expire by that
    # clock alone; Redis would also drop the key itself (SET EX), but a hit is only served
    # while the entry's own `expires` is ahead of the clock, so a stale key still in Redis
    # is a miss all the same. That Redis is asked to expire the key is checked below.
    clock.shift = 1.2
    headers, _ = await get(proxy, "/paymentProviders")
    assert headers["X-Cache"] == "MISS"
    assert sim.state.payment_provider_calls == 2


async def test_routes_not_listed_are_never_cached(
    start_proxy: StartProxy, sim: GiniSimulator
) -> None:
    proxy = await start_proxy(**cache_config("memory", ["/paymentProviders"]))
    for _ in range(2):
        headers, _ = await get(proxy, "/configurations")
        assert "X-Cache" not in headers
    assert len([r for r in sim.state.requests if r.path == "/configurations"]) == 2


@pytest.mark.parametrize(
    ("control", "shared", "stored"),
    [
        ("no-store", False, False),
        ("no-store", True, False),
        ("private, max-age=60", True, False),
        ("private, max-age=60", False, True),
        ("max-age=60", True, True),
    ],
)
async def test_cache_control_is_honoured(
    start_proxy: StartProxy, control: str, shared: bool, stored: bool
) -> None:
    routes = [{"path": "/_sandbox/echo", "shared": shared}]
    proxy = await start_proxy(**cache_config("memory", routes))
    path = f"/_sandbox/echo?header=Cache-Control:{control}"
    await get(proxy, path)
    headers, _ = await get(proxy, path)
    assert headers["X-Cache"] == ("HIT" if stored else "MISS")


async def test_errors_and_bodies_are_not_cached(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(**cache_config("memory", ["/_sandbox/echo"]))
    for _ in range(2):
        async with proxy.client.get(proxy.url + "/_sandbox/echo?status=404", headers=USER) as r:
            assert r.status == 404
            assert r.headers["X-Cache"] == "MISS"
    async with proxy.client.get(proxy.url + "/_sandbox/echo", headers=USER, data=b"x") as r:
        assert "X-Cache" not in r.headers
    assert results(proxy, "/_sandbox/echo")["bypass"] == 1


async def test_head_is_answered_from_a_get_entry(
    start_proxy: StartProxy, sim: GiniSimulator
) -> None:
    proxy = await start_proxy(**cache_config("memory", ["/paymentProviders"]))
    _, body = await get(proxy, "/paymentProviders")
    async with proxy.client.head(proxy.url + "/paymentProviders", headers=USER) as response:
        assert response.headers["X-Cache"] == "HIT"
        assert int(response.headers["Content-Length"]) == len(body)
    assert sim.state.payment_provider_calls == 1


async def test_sqlite_entries_survive_a_restart(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    config = cache_config(f"sqlite:///{tmp_path}/cache.db", ["/paymentProviders"])
    await get(await start_proxy(**config), "/paymentProviders")
    headers, _ = await get(await start_proxy(**config), "/paymentProviders")
    assert headers["X-Cache"] == "HIT"
    assert (tmp_path / "cache.db").stat().st_mode & 0o077 == 0


# -- failures ------------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis of our own on a free port, which the test may stop at will."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(100):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        subprocess.run(["sleep", "0.05"], check=True)
    yield f"redis://127.0.0.1:{port}/0", process
    process.kill()
    process.wait()


@pytest.mark.redis
async def test_redis_outage_degrades_to_pass_through(
    start_proxy: StartProxy,
    sim: GiniSimulator,
    private_redis: tuple[str, subprocess.Popen[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, server = private_redis
    proxy = await start_proxy(**cache_config(url, ["/paymentProviders"]))
    await get(proxy, "/paymentProviders")
    hit, _ = await get(proxy, "/paymentProviders")
    assert hit["X-Cache"] == "HIT"
    server.kill()
    server.wait()
    for _ in range(5):
        headers, body = await get(proxy, "/paymentProviders")
        assert headers["X-Cache"] == "MISS"
        assert proxy.config.public_url.encode() in body
    assert sim.state.payment_provider_calls == 6
    assert results(proxy, "/paymentProviders")["error"] >= 5
    warnings = [r for r in caplog.records if r.name == "proxy.response_cache"]
    assert len(warnings) == 1  # one line per outage, not one per request
    assert warnings[0].__dict__["address"] == url.split("//", 1)[1].split("/", 1)[0]  # host:port


@pytest.mark.redis
async def test_redis_entries_expire_in_redis_too(
    start_proxy: StartProxy, private_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    # Stale keys must not pile up in a shared Redis: each is written with the TTL as expiry.
    url, _ = private_redis
    proxy = await start_proxy(**cache_config(url, ["/paymentProviders"], ttl=7))
    await get(proxy, "/paymentProviders")
    client = redis.asyncio.from_url(url)
    keys = [key async for key in client.scan_iter(match="gini-auth-proxy:response:*")]
    ttls = [await client.ttl(key) for key in keys]
    await client.aclose()
    assert len(ttls) == 1
    assert 0 < ttls[0] <= 7


@pytest.mark.redis
async def test_tampered_redis_entry_is_never_served(
    start_proxy: StartProxy, sim: GiniSimulator, private_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, _ = private_redis
    proxy = await start_proxy(**cache_config(url, ["/paymentProviders"]))
    await get(proxy, "/paymentProviders")
    client = redis.asyncio.from_url(url)
    keys = [key async for key in client.scan_iter(match="gini-auth-proxy:response:*")]
    assert keys
    for key in keys:
        await client.set(key, b"\x80\x04not a signed entry")
    await client.aclose()
    headers, body = await get(proxy, "/paymentProviders")
    assert headers["X-Cache"] == "MISS"
    assert json.loads(body)  # the fresh answer, passed through
    assert sim.state.payment_provider_calls == 2
    # One bad entry is not an outage: the cache keeps working (the fresh answer was stored).
    headers, _ = await get(proxy, "/paymentProviders")
    assert headers["X-Cache"] == "HIT"


async def test_corrupt_sqlite_file_degrades(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    path = tmp_path / "cache.db"
    path.write_bytes(b"this is not a database" * 100)
    proxy = await start_proxy(**cache_config(f"sqlite:///{path}", ["/paymentProviders"]))
    for _ in range(2):
        headers, _ = await get(proxy, "/paymentProviders")
        assert headers["X-Cache"] == "MISS"
    assert results(proxy, "/paymentProviders")["error"] >= 1


async def test_the_entries_gauge_exists_only_with_a_cache(start_proxy: StartProxy) -> None:
    # Without a cache a constant 0 would read as "an empty cache" on a dashboard.
    # No store: the cached proxy below uses another identity key, which a shared store refuses.
    plain = await start_proxy(anonymous=None, store=None)
    async with plain.client.get(plain.admin_url + "/metrics") as response:
        assert "gini_proxy_response_cache_entries" not in await response.text()
    cached = await start_proxy(**cache_config("memory", ["/paymentProviders"]))
    async with cached.client.get(cached.admin_url + "/metrics") as response:
        assert "gini_proxy_response_cache_entries" in await response.text()


async def test_a_shared_entry_cannot_be_shaped_by_one_caller(
    start_proxy: StartProxy, sim: GiniSimulator
) -> None:
    """Caller A's unkeyed headers never reach Gini on a shared route, so B and C get an entry
    made only of what every caller with the same key would send."""
    proxy = await start_proxy(
        **cache_config("memory", [{"path": "/_sandbox/echo", "shared": True}])
    )
    evil = {
        **USER,
        "X-Evil": "poisonedByA",
        "X_Evil": "poisonedByA",
        "If-None-Match": '"poisonedByA"',
        "Range": "bytes=0-1",
        "User-Agent": "poisonedByA",
        "X-Document-Metadata-Branchid": "poisonedByA",
        "Accept": "application/json",
        "Accept-Language": "de",
    }
    headers, body = await get(proxy, "/_sandbox/echo", evil)
    assert headers["X-Cache"] == "MISS"
    names = {name.lower() for name, _ in json.loads(body)["headers"]}
    assert "poisonedByA" not in body.decode()
    assert {"accept", "accept-language", "authorization", "x-user-identifier"} <= names
    unkeyed = {"x-evil", "x_evil", "if-none-match", "range", "x-document-metadata-branchid"}
    assert not names & unkeyed
    for user in (BOB, {"X-User-Id": "carol@example.com"}):
        same = {**user, "Accept": "application/json", "Accept-Language": "de"}
        headers, served = await get(proxy, "/_sandbox/echo", same)
        assert headers["X-Cache"] == "HIT"
        assert served == body
    # Accept-Language is part of the key: another language is another entry.
    headers, _ = await get(proxy, "/_sandbox/echo", {**BOB, "Accept-Language": "en"})
    assert headers["X-Cache"] == "MISS"
    assert len([r for r in sim.state.requests if r.path == "/_sandbox/echo"]) == 2


async def test_per_user_routes_still_forward_the_callers_headers(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(**cache_config("memory", ["/_sandbox/echo"]))
    _, body = await get(proxy, "/_sandbox/echo", {**USER, "X-Document-Metadata-Branchid": "b7"})
    assert ["X-Document-Metadata-Branchid", "b7"] in json.loads(body)["headers"]
