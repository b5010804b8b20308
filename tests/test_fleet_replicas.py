"""The fleet across real processes: `gini-auth-proxy serve` replicas sharing a real Redis (and
a three-node Redis Cluster), the Gini simulator as Gini, a client asking every replica at once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio

from proxy.sandbox import GiniSimulator

from .conftest import eventually
from .fleet_support import (
    fleet_section,
    logins,
    metric,
    redis_cluster,
    redis_port,
    replicas,
    vend,
)
from .relay_support import Relay

__all__ = ["redis_cluster", "redis_port"]  # fixtures, imported for pytest

pytestmark = [pytest.mark.slow, pytest.mark.redis]


async def test_four_replicas_forty_new_users_one_login_each(
    sim: GiniSimulator, tmp_path: Path, redis_port: int
) -> None:
    sim.state.pay_api_delay = 0.05  # every replica asks while the first fetch runs
    users = [f"user-{n}@example.com" for n in range(40)]
    async with replicas(sim, tmp_path) as group, aiohttp.ClientSession() as client:
        started = await group.start(4, fleet=fleet_section(redis_port))
        tokens = await asyncio.gather(
            *(vend(client, r.url, user) for user in users for r in started)
        )
        waits = sum(
            [
                await metric(client, r.admin_url, "gini_proxy_fleet_lock_waits_total")
                for r in started
            ]
        )
    assert logins(sim) == 40
    for index in range(40):
        assert len(set(tokens[index * 4 : index * 4 + 4])) == 1, users[index]
    assert waits > 0


async def test_without_fleet_every_replica_logs_in(sim: GiniSimulator, tmp_path: Path) -> None:
    """The baseline the fleet removes: one `/login` per replica and user."""
    async with replicas(sim, tmp_path) as group, aiohttp.ClientSession() as client:
        started = await group.start(2)
        await asyncio.gather(*(vend(client, r.url, "solo@example.com") for r in started))
    assert logins(sim) == 2


async def test_ten_anonymous_users_at_three_replicas(
    sim: GiniSimulator, tmp_path: Path, redis_port: int
) -> None:
    sim.state.user_center_delay = 0.05
    users = [f"anon-{n}@example.com" for n in range(10)]
    async with replicas(sim, tmp_path) as group, aiohttp.ClientSession() as client:
        started = await group.start(3, fleet=fleet_section(redis_port))
        tokens = await asyncio.gather(
            *(vend(client, r.url, user, "anonymous") for user in users for r in started)
        )
    assert sim.state.users_created == 10
    assert sim.state.user_logins == 10
    assert sim.state.client_tokens_issued == 1
    for index in range(10):
        assert len(set(tokens[index * 3 : index * 3 + 3])) == 1


async def test_a_lock_holder_killed_mid_fetch_is_taken_over(
    sim: GiniSimulator, tmp_path: Path, redis_port: int
) -> None:
    lock_seconds, fetch = 2, 0.3
    sim.state.pay_api_delay = 30  # the holder's /login hangs until it is killed
    raw = redis.asyncio.Redis(port=redis_port)
    async with replicas(sim, tmp_path) as group, aiohttp.ClientSession() as client:
        holder, other = await group.start(
            2, fleet=fleet_section(redis_port, lock_seconds=lock_seconds)
        )
        doomed = asyncio.create_task(vend(client, holder.url, "olga@example.com"))

        async def locked() -> bool:
            return bool([key async for key in raw.scan_iter(match="gini-auth-proxy:{*}:lock")])

        await eventually(locked)
        waiting = asyncio.create_task(vend(client, other.url, "olga@example.com"))

        async def other_is_waiting() -> bool:  # its token request is in flight there
            return await metric(client, other.admin_url, "gini_proxy_in_flight_requests") >= 1

        await eventually(other_is_waiting)
        holder.kill()
        killed_at = time.monotonic()
        sim.state.pay_api_delay = fetch
        token = await waiting
        took = time.monotonic() - killed_at
        takeovers = await metric(client, other.admin_url, "gini_proxy_fleet_lock_takeovers_total")
        with pytest.raises(aiohttp.ClientError):
            await doomed
    await raw.aclose()
    assert token
    assert took < lock_seconds + fetch + 2  # generous: a loaded machine
    assert logins(sim) <= 2
    assert takeovers == 1


async def test_redis_cut_and_restored_through_a_relay(
    sim: GiniSimulator, tmp_path: Path, redis_port: int
) -> None:
    relay = Relay("127.0.0.1", redis_port)
    await relay.start()
    timeout = 0.25
    try:
        async with replicas(sim, tmp_path) as group, aiohttp.ClientSession() as client:
            fleet = fleet_section(relay.port, call_timeout_seconds=timeout)
            first, second = await group.start(2, fleet=fleet)
            await vend(client, first.url, "pia@example.com")
            relay.blackhole()  # Redis neither answers nor refuses
            started = time.monotonic()
            await vend(client, second.url, "quinn@example.com")
            assert time.monotonic() - started < timeout + 2
            assert await metric(client, second.admin_url, "gini_proxy_fleet_up") == 0
            started = time.monotonic()
            await vend(client, second.url, "rosa@example.com")  # no timeout paid again
            assert time.monotonic() - started < timeout
            await relay.restore()

            async def rejoined() -> bool:
                for replica in (first, second):
                    await vend(client, replica.url, "probe@example.com")
                ups = [
                    await metric(client, r.admin_url, "gini_proxy_fleet_up")
                    for r in (first, second)
                ]
                return ups == [1, 1]

            await eventually(rejoined, within=20)
            before = logins(sim)
            tokens = await asyncio.gather(
                *(vend(client, r.url, "sam@example.com") for r in (first, second))
            )
            assert logins(sim) == before + 1  # sharing again, no restart
            assert len(set(tokens)) == 1
    finally:
        await relay.close()


async def test_a_redis_cluster_shares_tokens(
    sim: GiniSimulator, tmp_path: Path, redis_cluster: list[int]
) -> None:
    sim.state.pay_api_delay = 0.05
    users = [f"cluster-{n}@example.com" for n in range(10)]
    fleet = fleet_section(redis_cluster[0], cluster=True)
    async with replicas(sim, tmp_path) as group, aiohttp.ClientSession() as client:
        started = await group.start(3, fleet=fleet)
        tokens = await asyncio.gather(
            *(vend(client, r.url, user) for user in users for r in started)
        )
        up = [await metric(client, r.admin_url, "gini_proxy_fleet_up") for r in started]
    assert up == [1, 1, 1]
    assert logins(sim) == 10
    for index in range(10):
        assert len(set(tokens[index * 3 : index * 3 + 3])) == 1
    # The keys spread over the nodes (hash tags keep each token beside its lock).
    holding = 0
    for port in redis_cluster:
        node = redis.asyncio.Redis(port=port)
        holding += bool([key async for key in node.scan_iter(match="gini-auth-proxy:{*}:token")])
        await node.aclose()
    assert holding >= 2
