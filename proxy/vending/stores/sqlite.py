"""SQLite credential store: the embedded default (one replica, or one sidecar with a volume).

WAL journal with `synchronous=FULL`, so a committed row survives a crash or power cut; the
database file is created owner-only (0600) and SQLite gives its -wal/-shm files the same mode.
What must outlive a lost or damaged -wal file (the key checks, activated users, erasures) is
checkpointed into the main file right after it is written.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from proxy.errors import StoreUnavailable
from proxy.reporting.episodes import Episodes
from proxy.vending.stores.base import (
    SealedRow,
    StoreDown,
    StoredUser,
    StoreOpenError,
    StoreOrigin,
    parse_state,
    require_user,
)
from proxy.vending.stores.cipher import Cipher, WrongKey
from proxy.vending.stores.keyring import open_sealed
from proxy.vending.stores.schema import announce, anonymous_users_table, bootstrap, meta_table

log = logging.getLogger("proxy.store")

_MIGRATIONS = {1: (anonymous_users_table("BLOB", "REAL NOT NULL"),)}
_META_TABLE = meta_table("BLOB")
# Not one unlucky call but a store that cannot work: down at once (the others wake the check).
_DOWN = {
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_NOTADB,
    sqlite3.SQLITE_CANTOPEN,
}


class SqliteStore:
    """CredentialStore on one SQLite file through aiosqlite."""

    def __init__(self, path: Path, cipher: Cipher, busy_timeout: float = 2.0):
        self.path = path
        self.cipher = cipher
        self.busy_timeout = busy_timeout
        self.episodes = Episodes(log)  # an outage logs its start, a line a minute, its end
        self._db: aiosqlite.Connection | None = None
        # aiosqlite runs one statement at a time but lets another coroutine's statement in
        # while a cursor is open. That statement then runs inside the open read transaction:
        # a checkpoint fails with SQLITE_LOCKED, and a write whose snapshot another process has
        # moved past fails with SQLITE_BUSY at once, without busy_timeout. So every store call
        # has the connection to itself until its cursors are closed.
        self._turn = asyncio.Lock()
        self.origin: StoreOrigin | None = None

    async def open(self) -> None:
        self._create_private_file()
        try:
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            await self._enable_wal()
            await self._db.execute("PRAGMA synchronous = FULL")
            self.origin = await self._migrate()
            await self._checkpoint("TRUNCATE")
        except (sqlite3.Error, WrongKey) as exc:
            await self.close()
            raise StoreOpenError(f"cannot open SQLite store {self.path}: {exc}") from None
        except BaseException:
            await self.close()
            raise
        announce(self.origin, "sqlite")

    async def _enable_wal(self) -> None:
        # Switching a fresh file to WAL can fail with SQLITE_BUSY at once, without waiting for
        # busy_timeout, while another process does the same: retry until busy_timeout is spent.
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                await self.db.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)
            else:
                return

    def _create_private_file(self) -> None:
        if not self.path.parent.is_dir():
            raise StoreOpenError(
                f"the folder of the SQLite store does not exist: {self.path.parent}"
            )
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            raise StoreOpenError(f"cannot open SQLite store {self.path}: {exc.strerror}") from None
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                log.warning("store file was readable by others; restricting it to 0600",
                            extra={"path": str(self.path), "mode": oct(mode)})  # fmt: skip
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)

    async def _migrate(self) -> StoreOrigin:
        db = self.db
        await db.execute("BEGIN IMMEDIATE")  # one process migrates; others wait (busy_timeout)
        try:
            origin = await bootstrap(self, _META_TABLE, _MIGRATIONS, self.cipher)
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return origin

    async def _checkpoint(self, mode: str = "PASSIVE") -> None:
        """Copy what the WAL holds into the main file, so a lost -wal file cannot take it.
        PASSIVE never waits; TRUNCATE (at open) waits for readers and empties the WAL."""
        async with self.db.execute(f"PRAGMA wal_checkpoint({mode})") as cursor:
            row = await cursor.fetchone()
        if row is not None and row[0]:  # another process's reader held old pages past busy_timeout
            log.warning("the SQLite WAL could not be checkpointed", extra={"mode": mode})

    async def has_users(self) -> bool:
        async with self.db.execute("SELECT EXISTS (SELECT 1 FROM anonymous_users)") as cursor:
            row = await cursor.fetchone()
        return bool(row and row[0])

    async def run(self, statement: str) -> None:
        await self.db.execute(statement)

    async def read_meta(self, name: str) -> bytes | None:
        async with self.db.execute(
            "SELECT value FROM gini_proxy_meta WHERE name = ?", (name,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        value = row[0]
        return value if isinstance(value, bytes) else str(value).encode()

    async def write_meta(self, name: str, value: bytes) -> None:
        await self.db.execute(
            "INSERT INTO gini_proxy_meta (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreUnavailable
        return self._db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[aiosqlite.Connection]:
        try:
            async with self._turn:
                yield self.db
        except (sqlite3.Error, ValueError) as exc:  # ValueError: connection already closed
            code = getattr(exc, "sqlite_errorcode", None)
            name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
            fields = {"error": name, "path": str(self.path)}
            self.episodes.failed("store", "call", "store call failed", fields)
            if code is not None and code & 0xFF in _DOWN:
                raise StoreDown(name) from None
            raise StoreUnavailable from None
        self.episodes.succeeded("store")

    async def ping(self) -> None:
        # A write, not SELECT 1: a full disk or a read-only file still answers reads.
        async with self._errors() as db:
            await db.execute(
                "INSERT INTO gini_proxy_meta (name, value) VALUES ('heartbeat', ?)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (repr(time.time()).encode(),),
            )

    def use_password(self, password: str) -> None:
        """A file has no password (config refuses `store.password` for SQLite)."""

    async def get(self, key: str) -> StoredUser | None:
        async with (
            self._errors() as db,
            db.execute(
                "SELECT email, password, state FROM anonymous_users WHERE user_key = ?", (key,)
            ) as cursor,
        ):
            row = await cursor.fetchone()
        if row is None:
            return None
        email, sealed, state = row
        return StoredUser(
            key, email, await open_sealed(self, key, email, sealed), parse_state(state)
        )

    async def claim(self, key: str, email: str, password: str) -> StoredUser:
        now = time.time()
        async with self._errors() as db:
            await db.execute(
                "INSERT INTO anonymous_users"
                " (user_key, email, password, state, created_at, updated_at)"
                " VALUES (?, ?, ?, 'pending', ?, ?) ON CONFLICT (user_key) DO NOTHING",
                (key, email, self.cipher.seal_password(key, email, password), now, now),
            )
        return await require_user(self, key)

    async def replace(self, key: str, old_email: str, email: str, password: str) -> StoredUser:
        async with self._errors() as db:
            await db.execute(
                "UPDATE anonymous_users"
                " SET email = ?, password = ?, state = 'pending', updated_at = ?"
                " WHERE user_key = ? AND email = ?",
                (
                    email,
                    self.cipher.seal_password(key, email, password),
                    time.time(),
                    key,
                    old_email,
                ),
            )
        return await require_user(self, key)

    async def activate(self, key: str, email: str) -> None:
        async with self._errors() as db:
            await db.execute(
                "UPDATE anonymous_users SET state = 'active', updated_at = ?"
                " WHERE user_key = ? AND email = ? AND state = 'pending'",
                (time.time(), key, email),
            )
            await self._checkpoint()  # the device gets this user's token next: make it last

    async def delete(self, key: str) -> bool:
        async with self._errors() as db:
            cursor = await db.execute("DELETE FROM anonymous_users WHERE user_key = ?", (key,))
            await self._checkpoint()  # an erasure must not come back with an old -wal file
            return cursor.rowcount > 0

    async def count(self) -> int:
        async with self._errors() as db, db.execute("SELECT count(*) FROM anonymous_users") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def get_meta(self, name: str) -> bytes | None:
        async with self._errors():
            return await self.read_meta(name)

    async def setdefault_meta(self, name: str, value: bytes) -> bytes:
        async with self._errors() as db:
            await db.execute(
                "INSERT INTO gini_proxy_meta (name, value) VALUES (?, ?)"
                " ON CONFLICT (name) DO NOTHING",
                (name, value),
            )
            await self._checkpoint("TRUNCATE")  # the identity key id: see the module docstring
            stored = await self.read_meta(name)
        if stored is None:  # only a concurrent DELETE, which nothing here issues
            raise StoreUnavailable
        return stored

    async def replace_meta(self, name: str, old: bytes, new: bytes) -> bool:
        async with self._errors() as db:
            cursor = await db.execute(
                "UPDATE gini_proxy_meta SET value = ? WHERE name = ? AND value = ?",
                (new, name, old),
            )
            await self._checkpoint("TRUNCATE")
            return cursor.rowcount == 1

    async def sealed_rows(self, after: str, limit: int) -> list[SealedRow]:
        async with (
            self._errors() as db,
            db.execute(
                "SELECT user_key, email, password FROM anonymous_users"
                " WHERE user_key > ? ORDER BY user_key LIMIT ?",
                (after, limit),
            ) as cursor,
        ):
            rows = await cursor.fetchall()
        return [SealedRow(key, email, bytes(sealed)) for key, email, sealed in rows]

    async def sealed_row(self, key: str) -> SealedRow | None:
        async with (
            self._errors() as db,
            db.execute(
                "SELECT email, password FROM anonymous_users WHERE user_key = ?", (key,)
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return None if row is None else SealedRow(key, row[0], bytes(row[1]))

    async def reseal(self, key: str, email: str, old: bytes, new: bytes) -> bool:
        async with self._errors() as db:
            cursor = await db.execute(
                "UPDATE anonymous_users SET password = ?"
                " WHERE user_key = ? AND email = ? AND password = ?",
                (new, key, email, old),
            )
            return cursor.rowcount == 1

    async def reseal_many(self, swaps: Sequence[tuple[SealedRow, bytes]]) -> set[str]:
        if not swaps:
            return set()
        if sqlite3.sqlite_version_info < (3, 35):  # no RETURNING: one statement per row
            return {
                row.key
                for row, new in swaps
                if await self.reseal(row.key, row.email, row.sealed, new)
            }
        # One statement, so one transaction and one fsync per batch instead of per row.
        values = ", ".join(["(?, ?, ?, ?)"] * len(swaps))
        params = [value for row, new in swaps for value in (row.key, row.email, row.sealed, new)]
        async with (
            self._errors() as db,
            db.execute(
                f"WITH v(user_key, email, old, new) AS (VALUES {values})"  # noqa: S608 - placeholders only
                " UPDATE anonymous_users SET password = v.new FROM v"
                " WHERE anonymous_users.user_key = v.user_key"
                " AND anonymous_users.email = v.email AND anonymous_users.password = v.old"
                " RETURNING anonymous_users.user_key",
                params,
            ) as cursor,
        ):
            return {key for (key,) in await cursor.fetchall()}
