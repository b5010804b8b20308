"""The rules of `upstream.protection` without a server (proxy/transport/protection.py and
retry_after.py): pauses, the in-flight bound and its queue, the breaker, the retry budget."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.protection import BreakerConfig, ProtectionConfig
from proxy.errors import (
    ProxyError,
    UpstreamBusy,
    UpstreamThrottled,
    UpstreamThrottledUnavailable,
    UpstreamUnavailable,
)
from proxy.transport.protection import BUDGET_FLOOR, Guard, Window
from proxy.transport.retry_after import retry_after_seconds

from .conftest import FakeClock

NOW = 1_700_000_000.0


class Counts:
    def __init__(self) -> None:
        self.shed: list[str] = []
        self.retries: list[str] = []

    def upstream_shed(self, upstream: str, reason: str) -> None:
        self.shed.append(reason)

    def upstream_retry(self, upstream: str, result: str) -> None:
        self.retries.append(result)


def guard(clock: FakeClock, counts: Counts | None = None, **changes: object) -> Guard:
    breaker = BreakerConfig(failure_ratio=0.5, min_calls=4, window_seconds=10, open_seconds=5)
    config = ProtectionConfig(**{"breaker": breaker, **changes})  # type: ignore[arg-type]
    return Guard("pay_api", config, counts or Counts(), clock=clock, wall=lambda: NOW)


# -- Retry-After ----------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10**9))
def test_delta_seconds_are_read(seconds: int) -> None:
    assert retry_after_seconds(f" {seconds} ", NOW) == seconds


@given(st.integers(min_value=-(10**6), max_value=10**6))
def test_an_http_date_is_read_relative_to_now(offset: int) -> None:
    when = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=offset)
    assert retry_after_seconds(format_datetime(when, usegmt=True), NOW) == max(0, offset)


@given(st.text(max_size=40))
def test_anything_else_is_none_or_a_wait(text: str) -> None:
    seconds = retry_after_seconds(text, NOW)
    assert seconds is None or seconds >= 0


@pytest.mark.parametrize("text", ["", "-1", "1.5", "soon", "+3", "3s", "Mon, 99 Foo 2020"])
def test_junk_is_no_retry_after(text: str) -> None:
    assert retry_after_seconds(text, NOW) is None


def test_a_huge_number_is_only_large() -> None:
    assert retry_after_seconds("9" * 5000, NOW) == 10**9


# -- pause ----------------------------------------------------------------------------------


async def test_a_429_with_retry_after_pauses_until_then() -> None:
    clock, counts = FakeClock(), Counts()
    g = guard(clock, counts)
    assert g.try_enter()
    g.answered(429, {"Retry-After": "3"})
    g.leave()
    assert not g.try_enter()
    with pytest.raises(UpstreamThrottled) as caught:
        await g.enter()
    assert caught.value.status == 429
    assert caught.value.headers["Retry-After"] == "3"
    clock.now += 2.5
    with pytest.raises(UpstreamThrottled) as caught:
        await g.enter()
    assert caught.value.headers["Retry-After"] == "1"
    clock.now += 0.5
    await g.enter()
    g.leave()
    assert g.try_enter()  # the pause is over: the hot path again
    assert counts.shed == ["paused", "paused"]


async def test_a_503_pause_answers_503_and_is_capped() -> None:
    clock = FakeClock()
    g = guard(clock, max_pause_seconds=10)
    g.answered(503, {"Retry-After": "3600"})
    with pytest.raises(UpstreamThrottledUnavailable) as caught:
        await g.enter()
    assert caught.value.status == 503
    assert caught.value.headers["Retry-After"] == "10"
    clock.now += 10
    await g.enter()


async def test_retry_after_is_ignored_when_not_honoured() -> None:
    g = guard(FakeClock(), honor_retry_after=False)
    g.answered(429, {"Retry-After": "3"})
    assert g.try_enter()


# -- the in-flight bound -------------------------------------------------------------------


async def test_slots_are_bounded_and_handed_over_in_order() -> None:
    g = guard(FakeClock(), max_in_flight=2, queue_seconds=5)
    assert g.try_enter()
    assert g.try_enter()
    assert not g.try_enter()
    order: list[int] = []

    async def wait(n: int) -> None:
        await g.enter()
        order.append(n)

    tasks = [asyncio.create_task(wait(n)) for n in range(3)]
    await asyncio.sleep(0)
    g.leave()
    g.leave()
    await asyncio.sleep(0)
    assert order == [0, 1]
    g.leave()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]


async def test_a_full_queue_sheds_after_queue_seconds() -> None:
    counts = Counts()
    g = guard(FakeClock(), counts, max_in_flight=1, queue_seconds=0.05)
    assert g.try_enter()
    with pytest.raises(UpstreamBusy) as caught:
        await g.enter()
    assert caught.value.headers["Retry-After"] == "1"
    assert counts.shed == ["busy"]
    g.leave()
    assert g.free == 1


async def test_a_cancelled_waiter_leaves_the_queue_at_once() -> None:
    g = guard(FakeClock(), max_in_flight=1, queue_seconds=60)
    assert g.try_enter()
    first = asyncio.create_task(g.enter())
    second = asyncio.create_task(g.enter())
    await asyncio.sleep(0)
    assert g.status()["queued"] == 2
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert g.status()["queued"] == 1
    g.leave()
    await second  # the slot skipped the one that left
    g.leave()
    assert g.free == 1


# -- the breaker -----------------------------------------------------------------------------


async def test_the_breaker_opens_probes_once_and_closes() -> None:
    clock, counts = FakeClock(), Counts()
    g = guard(clock, counts)
    for _ in range(3):
        g.failed("connect")
    assert g.try_enter()  # 3 calls: under min_calls
    g.answered(500, {})
    g.leave()
    assert g.breaker_open() == 1
    with pytest.raises(UpstreamUnavailable) as caught:
        await g.enter()
    assert caught.value.headers["Retry-After"] == "5"
    clock.now += 5
    await g.enter()  # the probe
    with pytest.raises(UpstreamUnavailable):
        await g.enter()  # only one
    g.answered(200, {})
    g.leave()
    assert g.breaker_open() == 0
    assert g.try_enter()
    assert counts.shed == ["breaker", "breaker"]


async def test_the_early_check_refuses_what_admission_would_and_never_takes_the_probe() -> None:
    """`check_shed` (flow 1, before any work): a pause, an open breaker and a probe in flight
    are refused with admission's errors; a breaker open long enough lets the call on to
    `enter`, which makes it the probe."""
    clock, counts = FakeClock(), Counts()
    g = guard(clock, counts)
    g.check_shed()  # closed, no pause: nothing to refuse
    g.answered(429, {"Retry-After": "2"})
    with pytest.raises(UpstreamThrottled):
        g.check_shed()
    clock.now += 2
    g.check_shed()  # the pause is over
    for _ in range(4):
        g.failed("connect")
    with pytest.raises(UpstreamUnavailable) as caught:
        g.check_shed()
    assert caught.value.headers["Retry-After"] == "5"
    clock.now += 5
    g.check_shed()  # open long enough: this call may probe ...
    g.check_shed()  # ... and the early check took nothing: so may the next one
    await g.enter()  # the probe
    with pytest.raises(UpstreamUnavailable):
        g.check_shed()  # a probe in flight: refused early too
    assert counts.shed == ["paused", "breaker", "breaker"]


async def test_a_failed_probe_reopens_and_4xx_never_count() -> None:
    clock = FakeClock()
    g = guard(clock)
    for _ in range(10):
        g.answered(404, {})
        g.answered(429, {})
    for _ in range(4):
        g.answered(503, {"Retry-After": "0"})  # Gini said when: not a failure
    assert g.breaker_open() == 0
    for _ in range(24):  # 24 of 48 calls
        g.failed("timeout")
    assert g.breaker_open() == 1
    clock.now += 5
    await g.enter()
    g.failed("connect")
    g.leave()
    with pytest.raises(UpstreamUnavailable):
        await g.enter()
    clock.now += 5
    probe = asyncio.create_task(g.enter())
    await probe
    g.leave()  # the probe's caller went away: the next caller probes
    await g.enter()


async def test_failures_age_out_of_the_window() -> None:
    clock = FakeClock()
    g = guard(clock)
    for _ in range(3):
        g.failed("connect")
    clock.now += 11
    g.failed("connect")
    assert g.breaker_open() == 0


# -- the retry budget --------------------------------------------------------------------------


def test_the_budget_has_a_floor_and_a_ratio() -> None:
    clock, counts = FakeClock(), Counts()
    g = guard(clock, counts)
    assert [g.spend_retry() for _ in range(BUDGET_FLOOR + 1)] == [True] * BUDGET_FLOOR + [False]
    for _ in range(50 + BUDGET_FLOOR):  # 50 first calls and the retries' own calls
        g.answered(200, {})
    spent = 0
    for _ in range(20):
        if g.spend_retry():
            spent += 1
            g.failed("connect")  # each retry is a call too, but no first call
    assert spent == 10 - BUDGET_FLOOR  # 20 % of the 50 first calls
    clock.now += 11
    assert g.spend_retry()
    assert counts.retries.count("over_budget") == 1 + 20 - spent


def test_errors_are_contract_errors() -> None:
    for error in (UpstreamThrottled, UpstreamThrottledUnavailable, UpstreamBusy):
        assert issubclass(error, ProxyError)
    assert UpstreamThrottledUnavailable.code == UpstreamThrottled.code == "upstream_throttled"


@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=4), st.integers(0, 3), st.integers(0, 3)),
        max_size=60,
    )
)
def test_a_window_counts_what_its_last_ten_buckets_saw(steps: list[tuple[float, int, int]]) -> None:
    window, now, seen = Window(10), 1000.0, []
    for gap, a, b in steps:
        now += gap
        window.add(now, a, b)
        seen.append((int(now), a, b))  # buckets of 1 s
        tick = int(now)
        expected = [(a_, b_) for t, a_, b_ in seen if tick - t < 10]
        assert window.totals(now) == (sum(x for x, _ in expected), sum(y for _, y in expected))


async def test_a_pause_is_told_to_the_board_and_one_heard_elsewhere_is_obeyed() -> None:
    told: list[tuple[str, float, int]] = []

    class Recorder:
        def heard(self, upstream: str, until: float, status: int) -> None:
            told.append((upstream, until, status))

    clock = FakeClock()
    config = ProtectionConfig(max_pause_seconds=30)
    g = Guard("user_center", config, Counts(), clock=clock, wall=lambda: NOW, board=Recorder())
    g.answered(503, {"Retry-After": "120"})
    assert told == [("user_center", NOW + 30, 503)]  # capped before it is shared
    other = Guard("user_center", config, Counts(), clock=clock, wall=lambda: NOW)
    other.pause_heard_elsewhere(NOW + 5, 429)
    with pytest.raises(UpstreamThrottled) as caught:
        await other.enter()
    assert caught.value.headers["Retry-After"] == "5"
    other.pause_heard_elsewhere(NOW - 1, 429)  # already over: nothing changes
    other.pause_heard_elsewhere(NOW + 3600, 429)
    assert other.pause_left() == 30  # capped here too
