"""A pause Gini asked for, shared by the fleet: one replica hears the 429, every replica honours
it; with Redis away each replica protects itself alone. Real Redis of the test's own, two
in-process proxies in front of the simulator."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

import pytest
import redis.asyncio

from proxy.sandbox import GiniSimulator

from .conftest import USER, RunningProxy, StartProxy, eventually
from .fleet_support import fleet_section, redis_binary, redis_cluster, redis_port

__all__ = ["redis_cluster", "redis_port"]  # fixtures, imported for pytest

pytestmark = pytest.mark.redis

PAUSE_KEY = "gini-auth-proxy:{pause}:pay_api"


async def documents(proxy: RunningProxy) -> tuple[int, dict[str, str], Any]:
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
        return answer.status, dict(answer.headers), await answer.json(content_type=None)


def pay_calls(sim: GiniSimulator) -> int:
    return sum(1 for r in sim.state.requests if r.app == "pay")


def paused(proxy: RunningProxy) -> float:
    return proxy.services.upstream.guards["pay_api"].pause_left()


def sample(proxy: RunningProxy, name: str, **labels: str) -> float:
    value = proxy.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def fleet_down(proxy: RunningProxy) -> bool:
    return sample(proxy, "gini_proxy_fleet_up") == 0


async def two_replicas(
    start_proxy: StartProxy, port: int, **fleet: Any
) -> tuple[RunningProxy, RunningProxy]:
    first, second = [await start_proxy(fleet=fleet_section(port, **fleet)) for _ in range(2)]
    for proxy in (first, second):  # tokens in hand: the next Pay API call is /documents
        assert (await documents(proxy))[0] == 200
    return first, second


async def test_a_pause_one_replica_hears_holds_every_replica(
    start_proxy: StartProxy, sim: GiniSimulator, redis_port: int
) -> None:
    first, second = await two_replicas(start_proxy, redis_port)
    sim.state.fail_next(1, status=429, app="pay", retry_after="3")
    status, headers, _ = await documents(first)
    heard = time.monotonic()
    assert (status, headers["Retry-After"]) == (429, "3")

    await eventually(lambda: paused(second) > 0, 3, "the second replica paused")
    took = time.monotonic() - heard
    assert took < 2  # one poll (0.5 s) on an idle machine; this one is shared
    before = pay_calls(sim)
    status, headers, body = await documents(second)
    assert status == 429
    assert body["error"] == "upstream_throttled"
    assert 1 <= int(headers["Retry-After"]) <= 3
    assert pay_calls(sim) == before  # the second replica never asked Gini
    assert sample(second, "gini_proxy_upstream_shed_total", upstream="pay_api", reason="paused")
    # Only the upstream that pushed back is paused.
    assert second.services.upstream.guards["user_center"].pause_left() == 0

    client = redis.asyncio.Redis(port=redis_port)
    try:
        assert 0 < await client.pttl(PAUSE_KEY) <= 3000  # gone from Redis when the pause ends
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_a_redis_cluster_shares_pauses(
    start_proxy: StartProxy, sim: GiniSimulator, redis_cluster: list[int]
) -> None:
    first, second = await two_replicas(start_proxy, redis_cluster[0], cluster=True)
    sim.state.fail_next(1, status=503, app="pay", retry_after="3")
    assert (await documents(first))[0] == 503
    await eventually(lambda: paused(second) > 0, 3, "the second replica paused")
    status, _, body = await documents(second)
    assert (status, body["error"]) == (503, "upstream_throttled")  # status 503, as Gini gave it
    assert sample(second, "gini_proxy_fleet_errors_total", op="pause") == 0


async def test_only_a_longer_pause_replaces_the_shared_one(
    start_proxy: StartProxy, redis_port: int
) -> None:
    (proxy,) = [await start_proxy(fleet=fleet_section(redis_port))]
    board = proxy.services.pauses
    assert board is not None
    client = redis.asyncio.Redis(port=redis_port)
    try:
        now = time.time()

        async def stored() -> bytes | None:
            value = await client.get(PAUSE_KEY)
            assert value is None or isinstance(value, bytes)
            return value

        board.heard("pay_api", now + 20, 503)
        await eventually(lambda: board.writing == 0, 3, "the write done")
        assert (await stored() or b"").endswith(b":503")
        board.heard("pay_api", now + 5, 429)  # shorter: the longer one stays
        await eventually(lambda: board.writing == 0, 3, "the write done")
        assert (await stored() or b"").endswith(b":503")
        assert await client.pttl(PAUSE_KEY) > 15000
        board.heard("pay_api", now + 30, 429)  # longer: replaces it
        await eventually(lambda: board.writing == 0, 3, "the write done")
        assert (await stored() or b"").endswith(b":429")
        assert await client.pttl(PAUSE_KEY) > 25000
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_with_redis_away_each_replica_protects_itself(
    start_proxy: StartProxy, sim: GiniSimulator, redis_port: int
) -> None:
    first, second = await two_replicas(start_proxy, redis_port)
    # Redis stops answering (and keeps its data): the poll notices on its own, counted as a
    # fleet error of op `pause`.
    asleep = await asyncio.create_subprocess_exec(
        redis_binary("redis-cli"), "-p", str(redis_port), "DEBUG", "SLEEP", "4",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    busy = redis.asyncio.Redis(port=redis_port)
    try:
        for proxy in (first, second):
            await eventually(partial(fleet_down, proxy), 3, "the fleet down")
            assert sample(proxy, "gini_proxy_fleet_errors_total", op="pause") >= 1
        sim.state.fail_next(1, status=429, app="pay", retry_after="3")
        started = time.monotonic()
        assert (await documents(first))[0] == 429
        assert time.monotonic() - started < 1  # hearing the pause never waits for Redis
        status, _, body = await documents(first)
        assert (status, body["error"]) == (429, "upstream_throttled")
        assert paused(second) == 0
        assert (await documents(second))[0] == 200  # the second replica still serves
        # ... and protects itself when Gini tells it to.
        sim.state.fail_next(1, status=429, app="pay", retry_after="3")
        assert (await documents(second))[0] == 429
        assert paused(second) > 0
        await asleep.wait()
        await eventually(lambda: not fleet_down(first), 5, "the fleet back")
        # Nothing was written while Redis was away: no stale pause reaches the fleet later.
        assert await busy.exists(PAUSE_KEY) == 0
    finally:
        if asleep.returncode is None:
            asleep.kill()
        await asleep.wait()
        await busy.aclose()
