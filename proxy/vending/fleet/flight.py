"""Fleet-wide single-flight: one Gini fetch per key for all replicas, through Redis.

Lookup order for a key the replica's memory misses: Redis, then Gini. Before fetching from
Gini a replica takes the key's lock (`SET NX PX lock_seconds`, a random owner) and a fencing
number (`INCR`, which only grows); it renews the lease while the fetch runs and releases it
(compare-and-delete) on success, failure or cancellation. The others poll the value with a
short backoff: they get the holder's token, or, when the lock lapses (the holder died or gave
up), exactly one of them wins `SET NX` and takes over. A write carries the writer's fence and
is refused when another owner holds the lock or the stored value has a newer fence, so a
holder whose lease was lost never overwrites a newer entry. Any Redis failure: the replica
fetches alone (its in-process single-flight still holds per replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.vending.fleet.remote import FleetDown, Remote
from proxy.vending.fleet.sealing import Entry, Names, Sealer
from proxy.vending.tokens import Fetch, Token

log = logging.getLogger("proxy.fleet")

FENCE_KEY = "fence"
POLL_FIRST, POLL_MAX = 0.01, 0.1
SKEW = 1.0
"""Seconds by which a shared token must outlive the one a renewal replaces: expiries cross
replicas as wall-clock times, so the same token may read a little later elsewhere."""

# KEYS: value, lock. ARGV: owner, fence, stored value, px.
WRITE = """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 0 end
local current = redis.call('GET', KEYS[1])
if current then
  local fence = tonumber(string.match(current, '^(%d+):'))
  if fence and fence > tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
"""
# KEYS: lock. ARGV: owner (and px for RENEW).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: value. ARGV: the stored value read before (delete only that one).
DROP_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Lease:
    owner: str
    fence: int


class Fleet:
    """Shared tokens and locks for every `TokenCache` of one replica (`tokens.Shared`)."""

    def __init__(
        self,
        remote: Remote,
        sealer: Sealer,
        lock_seconds: float,
        wait_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.remote = remote
        self.redis = remote.client
        self.sealer = sealer
        self.lock_ms = int(lock_seconds * 1000)
        self.wait_seconds = wait_seconds  # longest wait for another replica's fetch
        self.clock = clock
        self.wall = wall
        self.fence_key = sealer.prefix + FENCE_KEY

    def status(self) -> dict[str, object]:
        """For `/status`: never the URL (it may hold a password)."""
        config = self.remote.config
        return {
            "up": self.remote.up,
            "down_since": self.remote.down_since,
            "cluster": config.cluster,
            "key_prefix": config.key_prefix,
            "lock_seconds": config.lock_seconds,
            "call_timeout_seconds": config.call_timeout_seconds,
        }

    async def obtain(
        self, flow: str, key: str, fetch: Fetch, margin: float, newer_than: float
    ) -> tuple[Token, str]:
        """A token for `key`: "fleet" when another replica fetched it, "upstream" when this
        one did. A shared token is taken only before its refresh margin (`margin` seconds
        before expiry) begins, and only if it expires after `newer_than` (a renewal must not
        take back the token it renews)."""
        names = self.sealer.names(flow, key)
        try:
            found = await self._token_or_lease(names, margin, newer_than)
        except FleetDown:
            found = None
        if isinstance(found, Token):
            return found, "fleet"
        if found is None:
            return await fetch(), "upstream"  # alone: Redis is down, or the wait ran out
        return await self._fetch_holding(names, found, fetch, margin), "upstream"

    async def drop(self, flow: str, key: str, token: str | None = None) -> None:
        """Delete the shared token of `key` (only if it is `token`, when given)."""
        names = self.sealer.names(flow, key)
        try:
            if token is None:
                await self.remote.call("delete", self.redis.delete(names.value))
                return
            stored = await self.remote.call("get", self.redis.get(names.value))
            entry = self.sealer.open(names.value, stored)
            if entry is not None and entry.access_token == token:
                await self.remote.call("delete", self.redis.eval(DROP_IF, 1, names.value, stored))
        except FleetDown:
            pass  # the entry expires by itself; Gini refuses it anyway

    async def _read(self, names: Names, margin: float, newer_than: float) -> Token | None:
        stored = await self.remote.call("get", self.redis.get(names.value))
        entry = self.sealer.open(names.value, stored)
        if entry is None:
            return None
        token = Token(entry.access_token, self.clock() + entry.expires_at_wall - self.wall())
        if token.expires_at - margin <= self.clock() or token.expires_at <= newer_than + SKEW:
            return None
        return token

    async def _token_or_lease(
        self, names: Names, margin: float, newer_than: float
    ) -> Token | Lease | None:
        deadline = self.clock() + self.wait_seconds
        delay, waited = POLL_FIRST, False
        while True:
            token = await self._read(names, margin, newer_than)
            if token is not None:
                return token
            lease = await self._acquire(names)
            if lease is not None:
                # The holder may have written and released between our read and our SET NX.
                token = await self._read(names, margin, newer_than)
                if token is not None:
                    await self._release(names, lease)
                    return token
                if waited:
                    self.remote.metrics.takeovers.inc()
                return lease
            if not waited:
                waited = True
                self.remote.metrics.lock_waits.inc()
            if self.clock() >= deadline:
                log.warning("gave up waiting for another replica's token fetch; fetching alone")
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    async def _acquire(self, names: Names) -> Lease | None:
        owner = secrets.token_hex(16)
        try:
            taken = await self.remote.call(
                "lock", self.redis.set(names.lock, owner, nx=True, px=self.lock_ms)
            )
            if not taken:
                return None
            fence = await self.remote.call("lock", self.redis.incr(self.fence_key))
        except BaseException:
            # Cancelled or down after SET may have taken the lock: give it back (only if ours).
            await self._release(names, Lease(owner, 0))
            raise
        return Lease(owner, int(fence))

    async def _fetch_holding(
        self, names: Names, lease: Lease, fetch: Fetch, margin: float
    ) -> Token:
        renewer = asyncio.ensure_future(self._renew(names, lease))
        try:
            token = await fetch()
            await self._write(names, lease, token, margin)
            return token
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            await self._release(names, lease)

    async def _renew(self, names: Names, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self.lock_ms / 3000)
            try:
                kept = await self.remote.call(
                    "lock", self.redis.eval(RENEW, 1, names.lock, lease.owner, self.lock_ms)
                )
            except FleetDown:
                return
            if not kept:
                log.warning("lost the lease of a token fetch; its result will not be shared")
                return

    async def _write(self, names: Names, lease: Lease, token: Token, margin: float) -> None:
        usable_ms = int((token.expires_at - margin - self.clock()) * 1000)
        if usable_ms <= 0:
            return  # too short-lived to share
        entry = Entry(token.access_token, self.wall() + token.expires_at - self.clock())
        stored = self.sealer.seal(names.value, entry, lease.fence)
        with contextlib.suppress(FleetDown):  # the callers of this replica still get the token
            await self.remote.call(
                "write",
                self.redis.eval(
                    WRITE, 2, names.value, names.lock, lease.owner, lease.fence, stored, usable_ms
                ),
            )

    async def _release(self, names: Names, lease: Lease) -> None:
        with contextlib.suppress(FleetDown):  # the lease lapses by itself
            await self.remote.call("unlock", self.redis.eval(RELEASE, 1, names.lock, lease.owner))
