"""The store deadlines and the store check, on their own (the outage end to end is in
test_store_outage.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from proxy.errors import StoreUnavailable
from proxy.vending.stores.health import Deadlines, StoreHealth

from .conftest import eventually


async def test_a_deadline_never_waits_for_a_call_that_outlives_it() -> None:
    finished = asyncio.Event()

    async def slow() -> str:  # a driver whose own timeouts add up to more than the deadline
        await asyncio.sleep(0.6)  # slow peer: the store driver takes this long
        finished.set()
        return "late"

    deadlines = Deadlines()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await deadlines.run(slow(), 0.2)
    assert time.monotonic() - started < 0.4
    assert deadlines.abandoned == 1
    await deadlines.drain()  # shutdown: the call was left to end on its own, not cancelled
    assert finished.is_set()
    assert deadlines.abandoned == 0


async def test_a_deadline_passes_results_and_errors_through() -> None:
    deadlines = Deadlines()

    async def answer() -> int:
        return 42

    async def fail() -> None:
        raise StoreUnavailable

    assert await deadlines.run(answer(), 1) == 42
    with pytest.raises(StoreUnavailable):
        await deadlines.run(fail(), 1)
    assert deadlines.abandoned == 0


class HangingStore:
    """A store whose ping hangs until released (SQLite on a dead network volume)."""

    def __init__(self) -> None:
        self.pings = 0
        self.release = asyncio.Event()

    async def ping(self) -> None:
        self.pings += 1
        await self.release.wait()


async def test_checks_do_not_stack_up_behind_a_hanging_ping() -> None:
    store = HangingStore()
    health = StoreHealth(store, timeout=0.1)  # type: ignore[arg-type]
    for _ in range(5):
        started = time.monotonic()
        assert await health.check() is False
        assert time.monotonic() - started < 0.3
    assert store.pings == 1
    store.release.set()
    # the hung ping ends and is no longer tracked: checking resumes
    await eventually(health.check, what="a check after the hung ping")
    assert store.pings == 2
    await health.stop()


async def test_a_call_cancelled_by_the_driver_is_a_store_failure() -> None:
    async def cancelled_inside() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # as a driver's internal timeout handling may do
        await asyncio.sleep(1)  # slow peer: cancelled at once, never waited out

    with pytest.raises(StoreUnavailable):
        await Deadlines().run(cancelled_inside(), 1)


async def test_a_cancelled_caller_leaves_no_call_behind() -> None:
    deadlines = Deadlines()
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(0.3)  # slow peer: a store call still running when cancelled

    waiter = asyncio.create_task(deadlines.run(slow(), 30))
    await started.wait()
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    await deadlines.drain()
    assert deadlines.abandoned == 0
