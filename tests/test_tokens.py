"""TokenCache without a server: expiry margin, single-flight, cancellation, errors, bounds."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.vending.tokens import DEFAULT_LIFETIME, Token, TokenCache, lifetime_from

from .conftest import FakeClock


class Upstream:
    """Counts fetches; each one waits for `release` so tests can pile callers up."""

    def __init__(self, clock: FakeClock, lifetime: float = 3600) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()
        self.fail_with: Exception | None = None

    async def fetch(self) -> Token:
        self.calls += 1
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return Token(f"token-{self.calls}", self.clock() + self.lifetime)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_cache(
    clock: FakeClock,
    max_entries: int = 100,
    refresh_ahead: float = 0,
    on_error: Callable[[BaseException], None] | None = None,
) -> TokenCache:
    return TokenCache("derived", max_entries, 60, refresh_ahead, clock=clock, on_error=on_error)


async def test_cached_until_the_refresh_margin(clock: FakeClock) -> None:
    cache, upstream = make_cache(clock), Upstream(clock)
    first, cached = await cache.get("k", upstream.fetch)
    assert not cached
    clock.now += 3600 - 61
    again, cached = await cache.get("k", upstream.fetch)
    assert cached
    assert again is first
    clock.now += 1  # 60 s left: inside the margin, never handed out
    renewed, cached = await cache.get("k", upstream.fetch)
    assert not cached
    assert renewed.access_token == "token-2"
    assert upstream.calls == 2


async def test_one_fetch_for_many_concurrent_callers(clock: FakeClock) -> None:
    cache, upstream = make_cache(clock), Upstream(clock)
    upstream.release.clear()
    callers = [asyncio.create_task(cache.get("k", upstream.fetch)) for _ in range(50)]
    await asyncio.sleep(0)
    upstream.release.set()
    results = await asyncio.gather(*callers)
    assert upstream.calls == 1
    assert {token.access_token for token, _ in results} == {"token-1"}


async def test_a_cancelled_caller_does_not_cancel_the_fetch(clock: FakeClock) -> None:
    cache, upstream = make_cache(clock), Upstream(clock)
    upstream.release.clear()
    leaving = asyncio.create_task(cache.get("k", upstream.fetch))
    staying = asyncio.create_task(cache.get("k", upstream.fetch))
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    upstream.release.set()
    token, _ = await staying
    assert token.access_token == "token-1"
    assert leaving.cancelled()
    assert cache.peek("k") == token  # the fetch completed and filled the cache


async def test_a_lone_cancelled_caller_still_fills_the_cache(clock: FakeClock) -> None:
    cache, upstream = make_cache(clock), Upstream(clock)
    upstream.release.clear()
    only = asyncio.create_task(cache.get("k", upstream.fetch))
    await asyncio.sleep(0)
    only.cancel()
    upstream.release.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert cache.peek("k") is not None
    assert upstream.calls == 1


async def test_failure_reaches_every_waiter_and_is_not_cached(clock: FakeClock) -> None:
    errors: list[BaseException] = []
    cache, upstream = make_cache(clock, on_error=errors.append), Upstream(clock)
    upstream.release.clear()
    upstream.fail_with = RuntimeError("gini down")
    callers = [asyncio.create_task(cache.get("k", upstream.fetch)) for _ in range(5)]
    await asyncio.sleep(0)
    upstream.release.set()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert len(errors) == 1  # counted once per fetch, not per waiter
    assert cache.last_error == "RuntimeError"
    upstream.fail_with = None
    _, cached = await cache.get("k", upstream.fetch)
    assert not cached
    assert upstream.calls == 2


async def test_entries_are_bounded(clock: FakeClock) -> None:
    cache, upstream = make_cache(clock, max_entries=10), Upstream(clock)
    for n in range(25):
        await cache.get(f"user-{n}", upstream.fetch)
    assert len(cache) == 10


async def test_keys_are_independent(clock: FakeClock) -> None:
    cache, upstream = make_cache(clock), Upstream(clock)
    a, _ = await cache.get("a", upstream.fetch)
    b, _ = await cache.get("b", upstream.fetch)
    assert a != b


async def test_short_lived_token_is_handed_out_once_but_not_cached(clock: FakeClock) -> None:
    cache, upstream = make_cache(clock), Upstream(clock, lifetime=30)
    token, cached = await cache.get("k", upstream.fetch)
    assert not cached
    assert token.seconds_left(clock()) == 30
    assert cache.peek("k") is None


async def test_refresh_ahead_renews_hot_keys_in_the_background(clock: FakeClock) -> None:
    cache, upstream = make_cache(clock, refresh_ahead=30), Upstream(clock)
    first, _ = await cache.get("k", upstream.fetch)
    clock.now += 3600 - 60 - 20  # 20 s before the margin: inside the refresh-ahead window
    hit, cached = await cache.get("k", upstream.fetch)
    assert cached
    assert hit is first  # answered at once from the cache
    for _ in range(5):
        await asyncio.sleep(0)
    assert upstream.calls == 2
    renewed = cache.peek("k")
    assert renewed is not None
    assert renewed.access_token == "token-2"


async def test_forget_drops_the_token(clock: FakeClock) -> None:
    cache, upstream = make_cache(clock), Upstream(clock)
    await cache.get("k", upstream.fetch)
    cache.forget("k")
    assert cache.peek("k") is None


async def test_close_cancels_fetches_in_flight(clock: FakeClock) -> None:
    cache, upstream = make_cache(clock), Upstream(clock)
    upstream.release.clear()
    waiter = asyncio.create_task(cache.get("k", upstream.fetch))
    await asyncio.sleep(0)
    await cache.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter


def test_token_repr_hides_the_token() -> None:
    assert "secret-value" not in repr(Token("secret-value", 5.0))


def test_seconds_left_rounds_down_and_never_goes_negative() -> None:
    token = Token("t", 100.9)
    assert token.seconds_left(0) == 100
    assert token.seconds_left(200) == 0


@given(st.one_of(st.none(), st.booleans(), st.text(), st.integers(), st.floats(allow_nan=True)))
def test_lifetime_is_always_sane(expires_in: object) -> None:
    lifetime = lifetime_from(expires_in)
    assert math.isfinite(lifetime)
    assert 0 < lifetime <= 7 * 24 * 3600
    if isinstance(expires_in, int) and not isinstance(expires_in, bool) and 0 < expires_in <= 3600:
        assert lifetime == expires_in
    if expires_in is None or isinstance(expires_in, str | bool):
        assert lifetime == DEFAULT_LIFETIME
