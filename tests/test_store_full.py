"""A store that answers but cannot write (a full disk) must show as down, and recover.

SQLite runs on a real, small filesystem (a tmpfs) that the test fills to the last byte;
PostgreSQL on a real server whose tables, in the test's own schema, refuse writes with the
server's own "disk full" error (a trigger raising SQLSTATE 53100).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from proxy.errors import StoreUnavailable
from proxy.vending.stores.base import StoreDown
from proxy.vending.stores.health import GuardedStore, StoreHealth

from .conftest import RunningProxy, StartProxy, eventually
from .stores_support import (
    PostgresBackend,
    SqliteBackend,
    backend_for,
    fill,
    opened,
    small_volume,
)

ANONYMOUS = "/_proxy/tokens/anonymous"
EMAIL = "33333333-3333-4333-8333-333333333333@anon.example.com"


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    with small_volume(tmp_path / "volume") as where:
        yield where


async def until(condition: Callable[[], Awaitable[bool]], within: float) -> None:
    """Wait until `condition()` is true; fail after `within` seconds."""
    await eventually(condition, within=within)


async def metric(proxy: RunningProxy) -> float | None:
    async with proxy.client.get(proxy.admin_url + "/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith("gini_proxy_store_up "):
                return float(line.split()[1])
    return None


async def status(proxy: RunningProxy) -> dict[str, object]:
    async with proxy.client.get(proxy.admin_url + "/status") as response:
        page = await response.json()
    health: dict[str, object] = page["store_health"]
    return health


async def new_user(proxy: RunningProxy, user: str) -> tuple[int, dict[str, object]]:
    async with proxy.client.post(proxy.url + ANONYMOUS, headers={"X-User-Id": user}) as r:
        return r.status, await r.json()


# --- SQLite on a full filesystem -------------------------------------------------------------


async def test_a_full_disk_marks_the_sqlite_store_down_at_once_and_the_check_sees_it(
    volume: Path,
) -> None:
    backend = SqliteBackend(volume / "store.db")
    async with opened(backend.new_store()) as store:
        health = StoreHealth(store)  # its background task is not started: nothing else checks
        guarded = GuardedStore(store, health)
        await guarded.claim("a" * 64, EMAIL, "before-the-disk-filled")
        filler = fill(volume)
        with pytest.raises(StoreUnavailable):
            await guarded.claim("b" * 64, EMAIL, "no-room-for-this-one")
        assert health.up is False  # the failed write itself, not a later check
        assert health.last_error == "SQLITE_FULL"
        with pytest.raises(StoreUnavailable):  # every call fails fast while it is down
            await guarded.get("a" * 64)
        assert await health.check() is False  # the heartbeat cannot be written either
        filler.unlink()
        assert await health.check() is True
        assert (await guarded.claim("b" * 64, EMAIL, "room-again")).password == "room-again"
        await health.stop()


async def test_the_check_writes_so_a_full_disk_shows_as_store_down_end_to_end(
    start_proxy: StartProxy, volume: Path
) -> None:
    proxy = await start_proxy(store={"url": f"sqlite:///{volume}/store.db"})
    health = proxy.services.store_health
    assert health is not None
    health.interval = health.recheck_interval = 0.2  # the production pace is 3 s and 1 s
    status_code, body = await new_user(proxy, "before-the-disk-filled")
    assert status_code == 200, body
    assert await metric(proxy) == 1
    filler = fill(volume)

    async def down() -> bool:
        return await metric(proxy) == 0

    await until(down, within=10)  # reads still work: only a write can have told
    page = await status(proxy)
    assert page["up"] is False
    assert page["last_error"] == "SQLITE_FULL"
    status_code, body = await new_user(proxy, "while-the-disk-is-full")
    assert (status_code, body["error"]) == (503, "store_unavailable")
    status_code, body = await new_user(proxy, "before-the-disk-filled")  # token still cached
    assert status_code == 200, body

    filler.unlink()

    async def up() -> bool:
        return await metric(proxy) == 1

    await until(up, within=10)
    assert (await status(proxy))["up"] is True
    status_code, body = await new_user(proxy, "after-the-space-returned")
    assert status_code == 200, body


async def test_a_write_that_fails_on_a_full_disk_shows_as_store_down_end_to_end(
    start_proxy: StartProxy, volume: Path
) -> None:
    proxy = await start_proxy(store={"url": f"sqlite:///{volume}/store.db"})
    health = proxy.services.store_health
    assert health is not None
    health.interval, health.recheck_interval = 3600, 0.2  # no check while up: only the request
    checked = health.last_check_at
    health.wake()  # restart the wait with the new pace

    async def checked_once() -> bool:
        return health.last_check_at != checked

    await until(checked_once, within=5)
    status_code, body = await new_user(proxy, "before-the-disk-filled")
    assert status_code == 200, body
    filler = fill(volume)
    # SQLite reuses the space its files already hold: users fit until a page must be added.
    for n in range(500):
        status_code, body = await new_user(proxy, f"while-the-disk-is-full-{n}")
        if status_code != 200:
            break
    assert (status_code, body["error"]) == (503, "store_unavailable")
    assert await metric(proxy) == 0
    page = await status(proxy)
    assert (page["up"], page["last_error"]) == (False, "SQLITE_FULL")

    filler.unlink()

    async def up() -> bool:
        return await metric(proxy) == 1

    await until(up, within=10)
    status_code, body = await new_user(proxy, f"while-the-disk-is-full-{n}")
    assert status_code == 200, body


# --- PostgreSQL refusing writes ---------------------------------------------------------------

REFUSE_WRITES = """
CREATE FUNCTION gp_test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full';
END $$;
CREATE TRIGGER gp_test_disk_full BEFORE INSERT OR UPDATE ON anonymous_users
    FOR EACH ROW EXECUTE FUNCTION gp_test_disk_full();
CREATE TRIGGER gp_test_disk_full BEFORE INSERT OR UPDATE ON gini_proxy_meta
    FOR EACH ROW EXECUTE FUNCTION gp_test_disk_full();
"""
ACCEPT_WRITES = """
DROP TRIGGER gp_test_disk_full ON anonymous_users;
DROP TRIGGER gp_test_disk_full ON gini_proxy_meta;
"""


@pytest.fixture
async def postgres_backend(tmp_path: Path) -> AsyncIterator[PostgresBackend]:
    async with backend_for("postgres", tmp_path) as location:
        assert isinstance(location, PostgresBackend)
        yield location


@pytest.mark.postgres
async def test_a_postgres_store_that_cannot_write_is_down_at_once_and_recovers(
    postgres_backend: PostgresBackend,
) -> None:
    async with opened(postgres_backend.new_store()) as store:
        health = StoreHealth(store)
        guarded = GuardedStore(store, health)
        await guarded.claim("a" * 64, EMAIL, "before")
        assert await health.check() is True
        await postgres_backend.execute(REFUSE_WRITES)
        assert await store.get("a" * 64) is not None  # it still answers reads
        with pytest.raises(StoreDown):
            await guarded.claim("b" * 64, EMAIL, "refused")
        assert health.up is False
        assert health.last_error == "DiskFullError"
        assert await health.check() is False  # the heartbeat is a write: refused too
        await postgres_backend.execute(ACCEPT_WRITES)
        assert await health.check() is True
        assert (await guarded.claim("b" * 64, EMAIL, "accepted")).password == "accepted"
        await health.stop()
