"""What a store keeps through a crash with a lost SQLite WAL, and what it refuses to start on.

A writer process stores users and is killed; its -wal file is then deleted or overwritten, as a
crash on a damaged disk, or a copy of the database file alone, would leave it. The key checks,
the identity key id and every activated user must have been in the main file already. A store
holding users but no key check refuses to start; a store created empty says so.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from proxy.sandbox import GiniSimulator
from proxy.vending.stores.base import StoreOpenError
from proxy.vending.stores.cipher import Cipher
from proxy.vending.stores.sqlite import SqliteStore

from .conftest import StartProxy, config_data, merge
from .stores_support import (
    OTHER_STORE_KEY,
    STORE_KEY,
    Backend,
    SqliteBackend,
    backend_for,
    opened,
)
from .test_server import free_port, spawn

USERS = 200
KEY_ID = "0123456789abcdef"
WRITER = """
import asyncio, sys
from pathlib import Path
from proxy.vending.keyguard import check_store
from proxy.vending.stores.cipher import Cipher
from proxy.vending.stores.sqlite import SqliteStore

async def main() -> None:
    store = SqliteStore(Path(sys.argv[1]), Cipher(bytes.fromhex(sys.argv[2])))
    await store.open()
    await check_store(store, sys.argv[3])
    for n in range(int(sys.argv[4])):
        key = f"{n:064x}"
        user = await store.claim(key, f"{n}@anon.example.com", f"password-{n}")
        await store.activate(key, user.email)
    print("written", flush=True)
    await asyncio.sleep(3600)  # slow peer: a writer killed here, as a crash would

asyncio.run(main())
"""


async def write_then_crash(path: Path) -> None:
    """Store USERS activated users from another process, then SIGKILL it."""
    writer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WRITER,
        str(path),
        STORE_KEY.hex(),
        KEY_ID,
        str(USERS),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert writer.stdout is not None
        line = await asyncio.wait_for(writer.stdout.readline(), 60)
        assert line == b"written\n"
    finally:
        writer.send_signal(signal.SIGKILL)
        await writer.wait()


def lose_the_wal(path: Path, how: str) -> None:
    wal = Path(f"{path}-wal")
    assert wal.exists()  # the killed writer left it behind
    if how == "deleted":
        wal.unlink()
        Path(f"{path}-shm").unlink(missing_ok=True)
    else:  # overwritten: no frame's checksum holds
        wal.write_bytes(os.urandom(max(wal.stat().st_size, 4096)))


@pytest.mark.parametrize("how", ["deleted", "overwritten"])
async def test_a_lost_wal_loses_no_activated_user_and_no_key_check(
    tmp_path: Path, how: str
) -> None:
    path = tmp_path / "store.db"
    await write_then_crash(path)
    lose_the_wal(path, how)

    with pytest.raises(StoreOpenError, match="key"):  # the key check is still there
        await SqliteStore(path, Cipher(OTHER_STORE_KEY)).open()
    async with opened(SqliteStore(path, Cipher(STORE_KEY))) as store:
        assert store.origin is not None
        assert store.origin.created_fresh is False
        assert await store.get_meta("identity_key_id") == KEY_ID.encode()
        assert await store.count() == USERS
        user = await store.get(f"{USERS - 1:064x}")
        assert user is not None
        assert (user.password, user.state) == (f"password-{USERS - 1}", "active")


async def test_an_erasure_survives_a_lost_wal(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with opened(SqliteStore(path, Cipher(STORE_KEY))) as store:
        user = await store.claim("a" * 64, "a@anon.example.com", "pw")
        await store.activate("a" * 64, user.email)
        with closing(sqlite3.connect(path)) as other:  # as SQLite's own auto-checkpoint would
            other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert await store.delete("a" * 64)
        main_file = path.read_bytes()  # what a crash leaves beside a lost -wal file
    alone = tmp_path / "alone.db"
    alone.write_bytes(main_file)
    with closing(sqlite3.connect(alone)) as db:  # the user must not come back
        assert db.execute("SELECT count(*) FROM anonymous_users").fetchone() == (0,)


# --- users but no key check ----------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with backend_for(request.param, tmp_path) as location:
        yield location


async def lose_the_key_check(backend: Backend) -> None:
    await backend.execute(
        f"DELETE FROM gini_proxy_meta WHERE name IN ({backend.param(1)}, {backend.param(2)})",
        "key_check",
        "created_at",
    )


async def test_users_without_a_key_check_refuse_to_open(backend: Backend) -> None:
    async with opened(backend.new_store()) as store:
        await store.claim("a" * 64, "a@anon.example.com", "pw")
    await lose_the_key_check(backend)
    for key in (STORE_KEY, OTHER_STORE_KEY):  # neither the right key nor any other
        with pytest.raises(StoreOpenError, match="users but no key check"):
            await backend.new_store(key).open()
    assert await backend.meta("key_check") is None  # nothing was written over the damage


async def test_an_empty_store_without_a_key_check_is_created_fresh(backend: Backend) -> None:
    async with opened(backend.new_store()) as store:
        assert store.origin is not None
        assert store.origin.created_fresh is True
        created = store.origin.created_at
    async with opened(backend.new_store()) as store:
        assert store.origin is not None
        assert (store.origin.created_fresh, store.origin.created_at) == (False, created)


@pytest.mark.slow
async def test_the_real_process_exits_3_on_users_without_a_key_check(
    tmp_path: Path, sim: GiniSimulator
) -> None:
    data = merge(
        config_data(sim, tmp_path),
        {"listen": f"127.0.0.1:{free_port()}", "admin_listen": f"127.0.0.1:{free_port()}"},
    )
    key = base64.b64decode(data["store"]["encryption_key"])
    async with opened(SqliteStore(tmp_path / "store.db", Cipher(key))) as store:
        await store.claim("a" * 64, "a@anon.example.com", "pw")
    await lose_the_key_check(SqliteBackend(tmp_path / "store.db"))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    refused = await spawn("serve", "--config", str(path))
    assert await refused.finish() == 3
    output = refused.output.decode()
    assert "startup failed" in output
    assert "users but no key check" in output
    assert "restore the whole store" in output
    assert "Traceback" not in output


# --- a fresh store says so -----------------------------------------------------------------


async def test_a_fresh_store_warns_at_startup_and_shows_in_status(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="proxy.store")
    first = await start_proxy()
    fresh = [r for r in caplog.records if "new, empty credential store" in r.getMessage()]
    assert len(fresh) == 1
    assert fresh[0].levelno == logging.WARNING
    async with first.client.get(first.admin_url + "/status") as response:
        health = (await response.json())["store_health"]
    assert health["created_fresh"] is True
    assert health["created_at"]
    store = first.services.store
    assert store is not None
    await store.close()

    caplog.clear()
    again = await start_proxy()  # the same store file
    assert not [r for r in caplog.records if "new, empty" in r.getMessage()]
    async with again.client.get(again.admin_url + "/status") as response:
        later = (await response.json())["store_health"]
    assert later["created_fresh"] is False
    assert later["created_at"] == health["created_at"]
