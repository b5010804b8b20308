"""The fleet section: token vending with `fleet` on (tokens and one fetch per user shared by
the replicas through Redis) against the same proxies with it off.

Eight replicas with `fleet` (one key prefix made for the run) and eight without are started
against the machine's Redis and the bench upstream, which counts its `/login` calls:

- Gini calls per user: for N = 1, 2, 4 and 8 replicas, new users, each user's token asked at
  all N replicas at once; the `/login` calls divided by the users. With `fleet` it should be
  1 whatever N; without, up to N. Every answer is checked, and the users whose N answers carry
  one and the same token are counted.
- A token from Redis against one from local memory: tokens for new users fetched through one
  replica, then asked one after the other at another replica (its memory misses, Redis has
  them: the proxy counts them as `source="fleet"`), then asked there again (memory hits);
  the p50 of each pass, one request at a time from an aiohttp client in the bench process.
- Vending from a warm local cache, fleet on against off: wrk loads one user's token at both
  sides alternately (compare.py); the local cache answers before Redis is ever asked.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import dataclass, field
from statistics import median
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp

from .compare import Contender
from .probe import counter
from .vending import ISSUED
from .vending import PATH as TOKENS_PATH

if TYPE_CHECKING:
    from .sections import Bench
    from .servers import Server

REPLICAS = (1, 2, 4, 8)


def redis_url() -> str:
    return os.environ.get("GINI_PROXY_TEST_REDIS_URL") or "redis://127.0.0.1:6379/0"


def where(url: str) -> str:
    """Host, port and database of a Redis URL: never its password."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


def fleet_yaml(url: str, prefix: str) -> str:
    return f'fleet:\n  redis_url: "{url}"\n  key_prefix: "{prefix}"\n'


@dataclass(frozen=True)
class Spread:
    """One user population asked at N replicas at once."""

    replicas: int
    fleet: bool
    users: int
    logins: int  # /login calls the upstream answered
    same_token: int  # users to whom every replica handed the same token
    errors: int  # answers that were not a good token answer

    @property
    def per_user(self) -> float:
        return self.logins / self.users if self.users else 0.0


@dataclass
class FleetResult:
    redis: str  # host:port/db, no credentials
    spreads: list[Spread] = field(default_factory=list)
    latency_users: int = 0
    redis_p50_ms: float = 0.0
    local_p50_ms: float = 0.0
    from_fleet: int = 0  # of the Redis pass, tokens the proxy counted as source="fleet"
    latency_errors: int = 0

    @property
    def added_ms(self) -> float:
        return self.redis_p50_ms - self.local_p50_ms


async def _token(session: aiohttp.ClientSession, url: str, user: str) -> str | None:
    async with session.post(url, headers={"X-User-Id": user}) as answer:
        body = await answer.json() if answer.status == 200 else None
        await answer.read()
    token = body.get("access_token") if isinstance(body, dict) else None
    return token if isinstance(token, str) else None


async def _at_once(proxies: list[Server], users: list[str]) -> list[list[str | None]]:
    """Every user's token asked at every proxy, all requests at once."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one_user(user: str) -> list[str | None]:
            asks = (_token(session, p.url + TOKENS_PATH, user) for p in proxies)
            return list(await asyncio.gather(*asks))

        return list(await asyncio.gather(*(one_user(user) for user in users)))


async def _one_by_one(proxy: Server, users: list[str]) -> tuple[list[float], int]:
    """Milliseconds per request, one at a time, and the failed answers."""
    url, times, errors = proxy.url + TOKENS_PATH, [], 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        await _token(session, url, "bench-user")  # the connection, opened before timing
        for user in users:
            started = time.perf_counter()
            token = await _token(session, url, user)
            times.append((time.perf_counter() - started) * 1000)
            errors += token is None
    return times, errors


def spread(bench: Bench, proxies: list[Server], fleet: bool, users: int) -> Spread:
    names = [f"bench-fleet-{'on' if fleet else 'off'}-{len(proxies)}-{u:03d}" for u in range(users)]
    before = bench._logins()
    tokens = asyncio.run(_at_once(proxies, names))
    logins = bench._logins() - before
    errors = sum(token is None for per_user in tokens for token in per_user)
    same = sum(1 for per_user in tokens if None not in per_user and len(set(per_user)) == 1)
    result = Spread(len(proxies), fleet, users, logins, same, errors)
    print(
        f"bench:   {len(proxies)} replica(s), fleet {'on ' if fleet else 'off'}: {logins} /login "
        f"calls for {users} users ({result.per_user:.2f} per user), {same} users got one token "
        f"everywhere, {errors} errors",
        flush=True,
    )
    return result


def latency(result: FleetResult, warm: Server, fresh: Server, users: int) -> None:
    """p50 of a token from Redis at `fresh` against one from its memory."""
    names = [f"bench-fleet-latency-{u:03d}" for u in range(users)]
    asyncio.run(_at_once([warm], names))  # fetched once, now in Redis and in `warm`'s memory
    before = counter(fresh.admin_url, ISSUED, flow="derived", source="fleet")
    from_redis, errors = asyncio.run(_one_by_one(fresh, names))
    result.from_fleet = int(
        counter(fresh.admin_url, ISSUED, flow="derived", source="fleet") - before
    )
    from_memory, more = asyncio.run(_one_by_one(fresh, names))
    result.latency_users = users
    result.latency_errors = errors + more
    result.redis_p50_ms, result.local_p50_ms = median(from_redis), median(from_memory)
    print(
        f"bench:   p50 from Redis {result.redis_p50_ms:.3f} ms ({result.from_fleet} of {users} "
        f"counted source=fleet), from memory {result.local_p50_ms:.3f} ms, "
        f"{result.latency_errors} errors",
        flush=True,
    )


def _forget(url: str, prefix: str) -> None:
    """Delete what the run left in Redis under its own prefix."""
    import redis  # noqa: PLC0415 - only this section needs a Redis client

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def section(bench: Bench) -> None:
    """`--only fleet`: the spreads, the latency pass and the alternating vending comparison."""
    from .sections import stop  # noqa: PLC0415 - sections imports the report, which imports this

    url = redis_url()
    prefix = f"gini-bench-{uuid.uuid4().hex[:12]}:"
    result = bench.results.fleet = FleetResult(where(url))
    shared = fleet_yaml(url, prefix)
    on = [bench._proxy(tag="fleet-on", extra=shared) for _ in range(max(REPLICAS))]
    off = [bench._proxy(tag="fleet-off") for _ in range(max(REPLICAS))]
    users = 10 if bench.args.quick else 25
    try:
        print("bench: Gini calls per user, each user asked at every replica at once", flush=True)
        for n in REPLICAS:
            for fleet, group in ((False, off), (True, on)):
                result.spreads.append(spread(bench, group[:n], fleet, users))
        print("bench: a token from Redis against one from local memory", flush=True)
        latency(result, on[0], on[1], 100 if bench.args.quick else 300)
        processes = bench.timing.processes
        contenders = [
            *(
                Contender("fleet", "vending, fleet on", p.url + TOKENS_PATH, p.pid, "POST")
                for p in on[:processes]
            ),
            *(
                Contender("local", "vending, fleet off", p.url + TOKENS_PATH, p.pid, "POST")
                for p in off[:processes]
            ),
        ]
        bench.results.compare["fleet/32"] = bench._alternate(contenders, 32)
    finally:
        for proxy in [*off, *on]:
            stop(bench.procs, proxy)
        _forget(url, prefix)


def table(result: FleetResult) -> list[str]:
    lines = [
        "",
        f"### fleet: token vending with tokens shared through Redis ({result.redis})",
        "",
        "| replicas | fleet | users | /login calls | per user | one token everywhere | errors |",
        "|---------:|:-----:|------:|-------------:|---------:|---------------------:|-------:|",
    ]
    for s in result.spreads:
        lines.append(
            f"| {s.replicas:>8} | {'on' if s.fleet else 'off':^5} | {s.users:>5} | {s.logins:>12} "
            f"| {s.per_user:>8.2f} | {s.same_token:>20} | {s.errors:>6} |"
        )
    if result.latency_users:
        lines.append(
            f"token at a fresh replica, one request at a time, {result.latency_users} users: p50 "
            f"from Redis {result.redis_p50_ms:.3f} ms ({result.from_fleet} counted "
            f'source="fleet"), from memory {result.local_p50_ms:.3f} ms, '
            f"{result.latency_errors} errors"
        )
    return lines
