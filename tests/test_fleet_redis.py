"""The fleet against a real Redis of the test's own, with in-process proxies (fast enough for
the inner loop): sharing, fencing, cancellation, outages, slowness, consistency, and what
Redis holds. The same behaviours across real processes are in test_fleet_replicas.py."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio

from proxy.commands import doctor_checks
from proxy.config import build_config
from proxy.sandbox import GiniSimulator
from proxy.vending.fleet.flight import Fleet
from proxy.vending.tokens import Token

from .conftest import CLIENT_ID, HMAC_KEY, RunningProxy, StartProxy, eventually
from .fleet_support import (
    fleet_section,
    free_port,
    logins,
    redis_binary,
    redis_port,
    start_redis,
    stop,
    vend,
)

__all__ = ["redis_port"]  # the fixture, imported for pytest

pytestmark = pytest.mark.redis


@pytest.fixture
async def raw(redis_port: int) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis(port=redis_port)
    yield client
    await client.aclose()


async def fleet_proxies(
    start_proxy: StartProxy, port: int, n: int, **fleet: Any
) -> list[RunningProxy]:
    return [await start_proxy(fleet=fleet_section(port, **fleet)) for _ in range(n)]


def sample(proxy: RunningProxy, name: str, **labels: str) -> float:
    value = proxy.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def lock_taken(raw: redis.asyncio.Redis, name: str) -> bool:
    return bool(await raw.exists(name))


def fleet_of(proxy: RunningProxy) -> Fleet:
    assert proxy.services.fleet is not None
    return proxy.services.fleet


async def test_replicas_share_one_login_and_one_token_per_user(
    start_proxy: StartProxy, sim: GiniSimulator, redis_port: int
) -> None:
    sim.state.pay_api_delay = 0.1  # every caller arrives while the first fetch runs
    proxies = await fleet_proxies(start_proxy, redis_port, 3)
    users = [f"user-{n}@example.com" for n in range(5)]
    tokens = await asyncio.gather(
        *(vend(p.client, p.url, user) for user in users for p in proxies for _ in range(3))
    )
    assert logins(sim) == len(users)
    per_user = [set(tokens[i * 9 : (i + 1) * 9]) for i in range(len(users))]
    assert all(len(found) == 1 for found in per_user)
    shared = sum(
        sample(p, "gini_proxy_tokens_issued_total", flow="derived", source="fleet") for p in proxies
    )
    assert shared > 0
    assert sum(sample(p, "gini_proxy_fleet_lock_waits_total") for p in proxies) > 0
    # A replica that never saw a user takes the token from Redis, without Gini.
    late = await start_proxy(fleet=fleet_section(redis_port))
    assert await vend(late.client, late.url, users[0]) in per_user[0]
    assert logins(sim) == len(users)
    assert sample(late, "gini_proxy_tokens_issued_total", flow="derived", source="fleet") == 1


async def test_a_burst_of_new_users_beyond_the_redis_pool_keeps_the_replica_in_the_fleet(
    start_proxy: StartProxy, sim: GiniSimulator, redis_port: int
) -> None:
    """150 users at once at one replica: more Redis calls than redis-py's pool has connections
    (100). They wait their turn; none fails, the replica stays up, and every token is shared.
    (A call timeout of 1 s: this test's one loop also runs the clients and the simulator.)"""
    sim.state.pay_api_delay = 0.05  # the calls pile up while the fetches run
    first, second = await fleet_proxies(start_proxy, redis_port, 2, call_timeout_seconds=1)
    users = [f"burst-{n}@example.com" for n in range(150)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        tokens = await asyncio.gather(*(vend(client, first.url, user) for user in users))
    assert sample(first, "gini_proxy_fleet_up") == 1
    assert sum(s.value for s in _samples(first, "gini_proxy_fleet_errors_total")) == 0
    later = [await vend(second.client, second.url, user) for user in users[:20]]
    assert later == tokens[:20]
    assert sample(second, "gini_proxy_tokens_issued_total", flow="derived", source="fleet") == 20
    assert logins(sim) == len(users)


def _samples(proxy: RunningProxy, name: str) -> list[Any]:
    return [
        s for family in proxy.metrics.registry.collect() for s in family.samples if s.name == name
    ]


async def test_redis_holds_nothing_readable(
    start_proxy: StartProxy, sim: GiniSimulator, redis_port: int, raw: redis.asyncio.Redis
) -> None:
    proxy, _ = await fleet_proxies(start_proxy, redis_port, 2)
    user = "carol.secret-name@example.com"
    derived = await vend(proxy.client, proxy.url, user)
    anonymous = await vend(proxy.client, proxy.url, user, "anonymous")
    identifier = proxy.services.deriver(user)
    client_tokens = [t for t in sim.state.tokens.values() if t.kind == "client"]
    secrets = [user, identifier, derived, anonymous, CLIENT_ID, HMAC_KEY,
               *(t.value for t in client_tokens)]  # fmt: skip
    assert client_tokens
    dump = b""
    async for key in raw.scan_iter(match="*"):
        dump += key + b"\n" + (await raw.dump(key) or b"") + b"\n"
    assert dump.count(b"gini-auth-proxy:{") >= 3  # derived, anonymous and the client token
    for secret in secrets:
        assert secret.encode() not in dump, secret[:6]
        assert secret.lower().encode() not in dump.lower()


async def test_tokens_expire_in_redis_when_their_refresh_margin_begins(
    start_proxy: StartProxy, sim: GiniSimulator, redis_port: int, raw: redis.asyncio.Redis
) -> None:
    proxy = await start_proxy(
        fleet=fleet_section(redis_port), tokens={"refresh_before_expiry_seconds": 100}
    )
    await vend(proxy.client, proxy.url, "dave@example.com")
    keys = [key async for key in raw.scan_iter(match="gini-auth-proxy:{*}:token")]
    assert len(keys) == 1
    ttl = await raw.pttl(keys[0])
    lifetime = sim.config.token_lifetime
    assert (lifetime - 100 - 5) * 1000 < ttl <= (lifetime - 100) * 1000
    assert [key async for key in raw.scan_iter(match="gini-auth-proxy:{*}:lock")] == []


async def test_a_holder_whose_lease_was_lost_never_overwrites_a_newer_entry(
    start_proxy: StartProxy, redis_port: int, raw: redis.asyncio.Redis
) -> None:
    first, second = (fleet_of(p) for p in await fleet_proxies(start_proxy, redis_port, 2))
    release_first = asyncio.Event()

    async def slow_fetch() -> Token:
        await release_first.wait()
        return Token("old-token", time.monotonic() + 3600)

    async def quick_fetch() -> Token:
        return Token("new-token", time.monotonic() + 3600)

    holder = asyncio.create_task(first.obtain("derived", "k", slow_fetch, 60, -math.inf))
    names = first.sealer.names("derived", "k")
    await eventually(lambda: lock_taken(raw, names.lock))
    await raw.delete(names.lock)  # the lease is lost (a failover, an expiry)
    token, source = await second.obtain("derived", "k", quick_fetch, 60, -math.inf)
    assert (token.access_token, source) == ("new-token", "upstream")
    release_first.set()
    old, _ = await holder
    assert old.access_token == "old-token"  # its own callers still get what it fetched
    stored = await raw.get(names.value)
    assert isinstance(stored, bytes)
    entry = first.sealer.open(names.value, stored)
    assert entry is not None
    assert entry.access_token == "new-token"
    assert await raw.get(names.lock) is None  # and it did not release the other's lock


async def test_a_cancelled_holder_releases_its_lock(
    start_proxy: StartProxy, redis_port: int, raw: redis.asyncio.Redis
) -> None:
    (proxy,) = await fleet_proxies(start_proxy, redis_port, 1, lock_seconds=30)
    fleet = fleet_of(proxy)
    never = asyncio.Event()

    async def hanging_fetch() -> Token:
        await never.wait()
        raise AssertionError

    task = asyncio.create_task(fleet.obtain("derived", "k", hanging_fetch, 60, -math.inf))
    names = fleet.sealer.names("derived", "k")
    await eventually(lambda: lock_taken(raw, names.lock))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await raw.exists(names.lock)  # not held for the 30 s lease


async def test_a_renewed_lease_outlives_lock_seconds(
    start_proxy: StartProxy, sim: GiniSimulator, redis_port: int
) -> None:
    sim.state.pay_api_delay = 2.5  # longer than the lease: only renewal keeps the others waiting
    first, second = await fleet_proxies(
        start_proxy, redis_port, 2, lock_seconds=1, call_timeout_seconds=0.25
    )
    holder = asyncio.create_task(vend(first.client, first.url, "erin@example.com"))
    # time passes: past the first lease; without renewal it would have lapsed
    await asyncio.sleep(1.5)
    late = await vend(second.client, second.url, "erin@example.com")
    assert logins(sim) == 1
    assert late == await holder


async def test_erasing_an_anonymous_user_deletes_its_shared_token(
    start_proxy: StartProxy, redis_port: int, raw: redis.asyncio.Redis
) -> None:
    proxy, other = await fleet_proxies(start_proxy, redis_port, 2)
    user = {"X-User-Id": "frank@example.com"}
    await vend(proxy.client, proxy.url, "frank@example.com", "anonymous")
    names = fleet_of(proxy).sealer.names("anonymous", proxy.services.deriver("frank@example.com"))
    assert await raw.exists(names.value)
    async with other.client.delete(other.url + "/_proxy/users/anonymous", headers=user) as r:
        assert r.status == 204
    assert not await raw.exists(names.value)


async def test_a_client_token_gini_refuses_is_dropped_fleet_wide(
    start_proxy: StartProxy, sim: GiniSimulator, redis_port: int
) -> None:
    first, second = await fleet_proxies(start_proxy, redis_port, 2)
    await vend(first.client, first.url, "gina@example.com", "anonymous")
    assert sim.state.client_tokens_issued == 1
    sim.state.revoke_tokens(CLIENT_ID)  # Gini stops accepting it before it expires
    # The second replica takes the shared (refused) token, drops it everywhere, fetches one.
    await vend(second.client, second.url, "hank@example.com", "anonymous")
    assert sim.state.client_tokens_issued == 2
    # The first still holds the old one in memory: refused, it finds the new one in Redis.
    await vend(first.client, first.url, "ivan@example.com", "anonymous")
    assert sim.state.client_tokens_issued == 2
    assert sim.state.users_created == 3


async def test_redis_down_the_replica_acts_alone_then_rejoins(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Any
) -> None:
    port, server = start_redis(tmp_path / "outage")
    try:
        first, second = await fleet_proxies(start_proxy, port, 2)
        await vend(first.client, first.url, "jane@example.com")
        stop(server)
        started = time.monotonic()
        await vend(second.client, second.url, "kate@example.com")
        assert time.monotonic() - started < 0.25 + 2  # call timeout plus a fetch, loaded machine
        assert sample(second, "gini_proxy_fleet_up") == 0
        errors = sample(second, "gini_proxy_fleet_errors_total", op="get")
        assert errors >= 1
        for n in range(5):  # down: no more Redis calls, so no more timeouts or errors
            await vend(second.client, second.url, f"down-{n}@example.com")
        assert sample(second, "gini_proxy_fleet_errors_total", op="get") == errors
        assert sample(second, "gini_proxy_fleet_lock_waits_total") == 0
        before = logins(sim)
        _, server = start_redis(tmp_path / "outage", port=port)
        deadline = time.monotonic() + 15
        while (
            sample(first, "gini_proxy_fleet_up") == 0 or sample(second, "gini_proxy_fleet_up") == 0
        ):
            assert time.monotonic() < deadline, "did not rejoin"
            await vend(first.client, first.url, "probe@example.com")
            await vend(second.client, second.url, "probe@example.com")
            await asyncio.sleep(0.2)  # paces: the probes while waiting to rejoin
        before = logins(sim)
        await asyncio.gather(*(vend(p.client, p.url, "lena@example.com") for p in (first, second)))
        assert logins(sim) == before + 1  # sharing again, with no restart
    finally:
        stop(server)


async def test_a_slow_redis_costs_callers_at_most_the_call_timeout(
    start_proxy: StartProxy, sim: GiniSimulator, redis_port: int
) -> None:
    (proxy,) = await fleet_proxies(start_proxy, redis_port, 1, call_timeout_seconds=0.2)
    await vend(proxy.client, proxy.url, "mike@example.com")
    cli = redis_binary("redis-cli")
    sleeper = await asyncio.create_subprocess_exec(
        cli, "-p", str(redis_port), "DEBUG", "SLEEP", "3", stdout=asyncio.subprocess.DEVNULL
    )
    await asyncio.sleep(0.2)  # slow peer: lets the Redis server fall asleep first
    started = time.monotonic()
    await vend(proxy.client, proxy.url, "nina@example.com")
    assert time.monotonic() - started < 0.2 + 1.5
    assert sample(proxy, "gini_proxy_fleet_up") == 0
    await sleeper.wait()


async def test_a_new_redis_password_applies_on_reload(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    port, server = start_redis(tmp_path / "auth", "--requirepass", "old-redis-pass-1")
    try:
        secret = tmp_path / "redis-password"
        secret.write_text("old-redis-pass-1\n")
        proxy = await start_proxy(
            fleet=fleet_section(port, password={"file": str(secret)}), reload_interval_seconds=0
        )
        await vend(proxy.client, proxy.url, "uma@example.com")
        admin = redis.asyncio.Redis(port=port, password="old-redis-pass-1")
        await admin.config_set("requirepass", "new-redis-pass-2")
        secret.write_text("new-redis-pass-2\n")
        result = await proxy.services.reloader.reload("fleet.password")
        assert result == {"fleet.password": "applied"}
        await admin.client_kill_filter(_type="normal", skipme=True)
        await admin.aclose()
        await vend(proxy.client, proxy.url, "vera@example.com")  # on a new connection
        assert sample(proxy, "gini_proxy_fleet_up") == 1
        raw = redis.asyncio.Redis(port=port, password="new-redis-pass-2")
        assert len([k async for k in raw.scan_iter(match="gini-auth-proxy:{*}:token")]) == 2
        await raw.aclose()
    finally:
        stop(server)


async def test_doctor_reports_on_the_fleets_redis(redis_port: int, tmp_path: Path) -> None:
    base = {"client": {"id": "c", "secret": "s"}, "identity": {"hmac_key": HMAC_KEY}}
    config = build_config({**base, "fleet": fleet_section(redis_port)}, {}, tmp_path)
    assert config.fleet is not None
    ok, detail = await doctor_checks.fleet(config.fleet, 2.0)
    assert ok, detail
    assert "answered" in detail
    dead = f"redis://:doctor-secret-pw@127.0.0.1:{free_port()}/0"
    config = build_config({**base, "fleet": {"redis_url": dead}}, {}, tmp_path)
    assert config.fleet is not None
    ok, detail = await doctor_checks.fleet(config.fleet, 2.0)
    assert not ok
    assert "unreachable" in detail
    assert "doctor-secret-pw" not in detail


async def test_status_and_metrics_show_the_fleet_only_when_configured(
    start_proxy: StartProxy, redis_port: int
) -> None:
    url = f"redis://:status-secret-pw@127.0.0.1:{redis_port}/0"
    plain, fleet = await start_proxy(), await start_proxy(fleet={"redis_url": url})
    async with plain.client.get(plain.admin_url + "/status") as r:
        assert (await r.json())["fleet"] is None
    assert plain.metrics.registry.get_sample_value("gini_proxy_fleet_up") is None
    async with fleet.client.get(fleet.admin_url + "/status") as r:
        text = await r.text()
    assert "status-secret-pw" not in text
    assert str(redis_port) not in text
    async with fleet.client.get(fleet.admin_url + "/status") as r:
        shown = (await r.json())["fleet"]
    assert shown["key_prefix"] == "gini-auth-proxy:"
    assert shown["cluster"] is False
    assert shown["up"] is (sample(fleet, "gini_proxy_fleet_up") == 1)
    async with fleet.client.get(fleet.admin_url + "/metrics") as r:
        assert "status-secret-pw" not in await r.text()


async def test_refresh_ahead_renews_once_for_the_fleet(
    start_proxy: StartProxy, sim: GiniSimulator, redis_port: int
) -> None:
    # Every token is inside the refresh-ahead window (30 s) from the start: usable for 20 s.
    margin = sim.config.token_lifetime - 20
    first, second = [
        await start_proxy(
            fleet=fleet_section(redis_port), tokens={"refresh_before_expiry_seconds": margin}
        )
        for _ in range(2)
    ]
    user = "wanda@example.com"
    key = first.services.deriver(user)
    old = await vend(first.client, first.url, user)
    assert await vend(second.client, second.url, user) == old  # from Redis
    assert logins(sim) == 1
    # Not a wait for a condition: the renewed token must expire measurably later than the old
    # one (more than the 1 s allowed for clocks), and tokens expire lifetime after issue.
    # time passes: see above
    await asyncio.sleep(1.5)
    # A hit at the first replica renews in the background: one more login, shared.
    assert await vend(first.client, first.url, user) == old

    async def renewed(proxy: RunningProxy) -> bool:
        token = proxy.services.token_caches["derived"].peek(key)
        return token is not None and token.access_token != old

    await eventually(lambda: renewed(first))
    # A hit at the second renews too, and finds the first's new token in Redis: no login.
    assert await vend(second.client, second.url, user) == old
    await eventually(lambda: renewed(second))
    assert logins(sim) == 2
    new = [p.services.token_caches["derived"].peek(key) for p in (first, second)]
    assert new[0] is not None
    assert new[1] is not None
    assert new[0].access_token == new[1].access_token


async def test_a_failed_fetch_releases_its_lock_and_shares_nothing(
    start_proxy: StartProxy, sim: GiniSimulator, redis_port: int, raw: redis.asyncio.Redis
) -> None:
    first, second = await fleet_proxies(start_proxy, redis_port, 2, lock_seconds=30)
    sim.state.fail_next(3, 503, "pay")  # the first attempt and both retries
    headers = {"X-User-Id": "xena@example.com"}
    async with first.client.post(first.url + "/_proxy/tokens/derived", headers=headers) as r:
        assert r.status >= 500
    assert [key async for key in raw.scan_iter(match="gini-auth-proxy:*")] == [
        b"gini-auth-proxy:fence"
    ]
    # Not held for the 30 s lease: the other replica fetches at once.
    started = time.monotonic()
    await vend(second.client, second.url, "xena@example.com")
    assert time.monotonic() - started < 5
