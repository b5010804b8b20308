"""Token cache: bounded, expiry-aware, single-flight, with refresh-ahead for hot keys (pure).

- A token with less than `refresh_before` seconds left is never handed out from the cache.
- However many callers ask for one key at once, one fetch runs; all of them get its result or
  its error. A failed fetch is not cached.
- The fetch runs in its own task: a caller that goes away (its handler is cancelled) stops
  waiting, but the fetch carries on for the others and still fills the cache.
- A cache hit whose token enters the last `refresh_ahead` seconds before the refresh margin
  starts one background fetch, so hot keys are renewed before any caller has to wait.
- With a `Shared` store (the `fleet` section), a miss asks it before Gini: it shares tokens
  and one fetch per key between replicas (`proxy.vending.fleet`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from cachetools import TLRUCache

log = logging.getLogger("proxy.tokens")

DEFAULT_LIFETIME = 300.0
"""Lifetime assumed when `expires_in` is missing or absurd: shorter than any seen (3599 s)."""
MAX_LIFETIME = 7 * 24 * 3600.0

Clock = Callable[[], float]
Fetch = Callable[[], Awaitable["Token"]]


@dataclass(frozen=True, slots=True)
class Token:
    """An access token and when it stops being valid, on the cache's clock."""

    access_token: str
    expires_at: float

    def __repr__(self) -> str:
        return f"Token(expires_at={self.expires_at:.0f})"  # never the token itself

    def seconds_left(self, now: float) -> int:
        """Whole seconds of real lifetime left (rounded down, never negative)."""
        return max(0, math.floor(self.expires_at - now))


class Shared(Protocol):
    """Tokens shared between replicas (`proxy.vending.fleet.flight.Fleet`)."""

    async def obtain(
        self, flow: str, key: str, fetch: Fetch, margin: float, newer_than: float
    ) -> tuple[Token, str]: ...

    async def drop(self, flow: str, key: str, token: str | None = None) -> None: ...


def lifetime_from(expires_in: object) -> float:
    """A sane lifetime in seconds from an `expires_in` field of any type."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        return DEFAULT_LIFETIME
    if not math.isfinite(expires_in) or expires_in <= 0 or expires_in > MAX_LIFETIME:
        return DEFAULT_LIFETIME
    return float(expires_in)


class TokenCache:
    """One flow's tokens, keyed by a non-secret key (the derived identifier, or "client")."""

    def __init__(
        self,
        flow: str,
        max_entries: int,
        refresh_before: float,
        refresh_ahead: float = 0.0,
        clock: Clock = time.monotonic,
        on_error: Callable[[BaseException], None] | None = None,
        shared: Shared | None = None,
    ):
        self.flow = flow
        self.on_error = on_error
        self.refresh_before = refresh_before
        self.refresh_ahead = refresh_ahead
        self.clock = clock
        self.shared = shared
        # Entries vanish once they are inside the refresh margin; LRU beyond max_entries.
        self._cache: TLRUCache[str, Token] = TLRUCache(
            maxsize=max_entries, ttu=self._usable_until, timer=clock
        )
        self._inflight: dict[str, asyncio.Task[tuple[Token, str]]] = {}
        self.last_error: str | None = None  # class name of the last failed fetch, for /status
        self.last_error_at: float | None = None

    def _usable_until(self, _key: str, token: Token, _now: float) -> float:
        return token.expires_at - self.refresh_before

    def __len__(self) -> int:
        self._cache.expire()
        return len(self._cache)

    def peek(self, key: str) -> Token | None:
        """The cached token for `key` if it may still be handed out."""
        return self._cache.get(key)

    async def get(self, key: str, fetch: Fetch) -> tuple[Token, bool]:
        """A usable token for `key` and whether it came from the cache."""
        token, source = await self.get_sourced(key, fetch)
        return token, source == "cache"

    async def get_sourced(self, key: str, fetch: Fetch) -> tuple[Token, str]:
        """A usable token for `key` and where it came from: "cache" (this replica's memory),
        "fleet" (another replica fetched it) or "upstream" (a fetch from Gini)."""
        token = self._cache.get(key)
        if token is not None:
            if (
                self.refresh_ahead
                and token.expires_at - self.refresh_before - self.clock() < self.refresh_ahead
            ):
                # Renew in the background, answer from the cache now. A shared token is taken
                # only if it outlives this one, or the renewal would renew nothing.
                self._start(key, fetch, token.expires_at)
            return token, "cache"
        # shield: cancelling this caller must not cancel the fetch the others wait on.
        return await asyncio.shield(self._start(key, fetch, -math.inf))

    def _start(self, key: str, fetch: Fetch, newer_than: float) -> asyncio.Task[tuple[Token, str]]:
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._run(key, fetch, newer_than))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return task

    async def _run(self, key: str, fetch: Fetch, newer_than: float) -> tuple[Token, str]:
        if self.shared is None:
            token, source = await fetch(), "upstream"
        else:
            margin = self.refresh_before
            token, source = await self.shared.obtain(self.flow, key, fetch, margin, newer_than)
        if token.expires_at - self.refresh_before > self.clock():
            self._cache[key] = token
        # else: too short-lived to cache; the callers waiting now still get it once.
        return token, source

    def _finished(self, key: str, task: asyncio.Task[tuple[Token, str]]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if task.cancelled():
            return
        error = task.exception()  # retrieving it also keeps asyncio from warning
        if error is not None:
            self.last_error = type(error).__name__
            self.last_error_at = time.time()
            if self.on_error is not None:
                self.on_error(error)

    def forget(self, key: str) -> None:
        """Drop a cached token (and stop trusting an in-flight fetch's result for it)."""
        self._cache.pop(key, None)
        task = self._inflight.pop(key, None)
        if task is not None:
            task.add_done_callback(lambda _: self._cache.pop(key, None))

    async def drop(self, key: str, token: str | None = None) -> None:
        """`forget`, and delete the shared token too (only if it is `token`, when given)."""
        self.forget(key)
        if self.shared is not None:
            await self.shared.drop(self.flow, key, token)

    async def close(self) -> None:
        """Cancel fetches still running (shutdown)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
