"""Token vending: how often the proxy asks the upstream for a token, and whose token it hands out.

An aiohttp client in the bench process sends `POST /_proxy/tokens/derived` for many users and
checks every answer: status 200, a bearer token with a sane `expires_in`, issued for the
caller's own identifier (the bench upstream names it in the token), and one token per user
across the run (a second one would mean a second fetch). The upstream counts its `/login`
calls; the proxy's `tokens_issued_total` metric tells cache hits from answers that waited for
a fetch (their own, or one already in flight for the same user: single-flight).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import time
from collections import defaultdict
from dataclasses import dataclass

import aiohttp

from .probe import counter, get_json
from .servers import HMAC_KEY, Server
from .upstream import TOKEN_LIFETIME

PATH = "/_proxy/tokens/derived"
ISSUED = "gini_proxy_tokens_issued_total"
SEED = 20240611  # the spread run's request order is random, but the same in every run


@dataclass(frozen=True)
class VendRun:
    what: str
    requests: int
    users: int
    concurrency: int
    seconds: float
    fetches: int  # /login calls the upstream answered during the run
    from_cache: int  # tokens the proxy handed out from its cache (its metric)
    after_fetch: int  # tokens handed out by a fetch the caller waited for (its own or shared)
    wrong: int  # answers carrying another user's token, or a second token for one user
    errors: int  # answers other than 200 with a well-formed token body

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def identifier(user: str) -> str:
    """The `X-User-Identifier` the proxy derives for `user` (the bench's HMAC key)."""
    return hmac.new(HMAC_KEY.encode(), user.encode(), hashlib.sha256).hexdigest()


async def _vend(session: aiohttp.ClientSession, url: str, user: str) -> str | None:
    """The token handed out to `user`, or None if the answer is not a good token answer."""
    async with session.post(url, headers={"X-User-Id": user}) as answer:
        if answer.status != 200:
            await answer.read()
            return None
        body = await answer.json()
    token, lifetime = body.get("access_token"), body.get("expires_in")
    if body.get("token_type") != "bearer" or not isinstance(token, str):
        return None
    if not isinstance(lifetime, int) or not 0 < lifetime <= TOKEN_LIFETIME:
        return None
    return token


def _tally(
    what: str,
    users: list[str],
    tokens: list[str | None],
    concurrency: int,
    seconds: float,
    counts: tuple[float, float, float],
) -> VendRun:
    fetches, from_cache, after_fetch = counts
    seen: dict[str, set[str]] = defaultdict(set)
    wrong = errors = 0
    for user, token in zip(users, tokens, strict=True):
        if token is None:
            errors += 1
            continue
        if token.split(".")[1:2] != [identifier(user)]:
            wrong += 1
        seen[user].add(token)
    wrong += sum(len(found) - 1 for found in seen.values())
    return VendRun(
        what,
        requests=len(users),
        users=len(set(users)),
        concurrency=concurrency,
        seconds=seconds,
        fetches=int(fetches),
        from_cache=int(from_cache),
        after_fetch=int(after_fetch),
        wrong=wrong,
        errors=errors,
    )


class _Counts:
    """Upstream logins and the proxy's issued-token counters, read before and after a run."""

    def __init__(self, proxy: Server, upstream_url: str):
        self.proxy = proxy
        self.logins = upstream_url + "/_bench/logins"

    def read(self) -> tuple[float, float, float]:
        return (
            float(get_json(self.logins)["calls"]),
            counter(self.proxy.admin_url, ISSUED, flow="derived", source="cache"),
            counter(self.proxy.admin_url, ISSUED, flow="derived", source="upstream"),
        )


def _delta(
    after: tuple[float, float, float], before: tuple[float, float, float]
) -> tuple[float, float, float]:
    return (after[0] - before[0], after[1] - before[1], after[2] - before[2])


async def _spread(url: str, users: list[str], concurrency: int) -> list[str | None]:
    """Every request in `users` order, `concurrency` at a time (each worker takes the next)."""
    tokens: list[str | None] = [None] * len(users)
    todo = iter(range(len(users)))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for index in todo:
                tokens[index] = await _vend(session, url, users[index])

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tokens


async def _burst(url: str, users: list[str]) -> list[str | None]:
    """Every request at once, each on its own connection."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return list(await asyncio.gather(*(_vend(session, url, user) for user in users)))


def measure_vending(
    proxy: Server, upstream_url: str, users: int = 100, requests: int = 1000, callers: int = 10
) -> list[VendRun]:
    """The spread run (`requests` over `users`, 32 at a time, random order with a fixed seed)
    and the burst (`callers` concurrent first requests for each of `users` new users)."""
    url = proxy.url + PATH
    counts = _Counts(proxy, upstream_url)
    runs: list[VendRun] = []

    order = [f"bench-spread-{i % users:03d}" for i in range(requests)]
    random.Random(SEED).shuffle(order)  # noqa: S311 - a reproducible order, not a secret
    before = counts.read()
    started = time.perf_counter()
    tokens = asyncio.run(_spread(url, order, 32))
    seconds = time.perf_counter() - started
    what = f"{requests:,} requests, {users} users, random order"
    runs.append(_tally(what, order, tokens, 32, seconds, _delta(counts.read(), before)))

    burst = [f"bench-burst-{u:03d}" for u in range(users) for _ in range(callers)]
    before = counts.read()
    started = time.perf_counter()
    tokens = asyncio.run(_burst(url, burst))
    seconds = time.perf_counter() - started
    what = f"burst: {callers} callers x {users} new users at once"
    runs.append(_tally(what, burst, tokens, len(burst), seconds, _delta(counts.read(), before)))

    for run in runs:
        print(
            f"bench:   {run.what}: {run.fetches} /login calls, {run.from_cache} from cache, "
            f"{run.after_fetch} after a fetch, {run.wrong} wrong, {run.errors} errors, "
            f"{run.seconds:.2f} s",
            flush=True,
        )
    return runs
