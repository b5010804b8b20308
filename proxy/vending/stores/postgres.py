"""PostgreSQL credential store: several replicas share one set of anonymous users.

Schema changes run under a transaction-scoped advisory lock, so replicas starting together
migrate once. Every step has a timeout: connect, pool acquire and statement (`timeout`, 2 s
by default); `health.GuardedStore` adds a deadline on each whole call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg

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

_MIGRATION_LOCK = 0x67696E69_70727879  # "giniprxy": any constant shared by all replicas
_MIGRATIONS = {1: (anonymous_users_table("BYTEA", "TIMESTAMPTZ NOT NULL DEFAULT now()"),)}
_META_TABLE = meta_table("BYTEA")
MIGRATION_LOCK_TIMEOUT = 10.0  # another replica may hold the lock while it migrates
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)
# The server answers but cannot work (disk full, out of memory or connections, a read-only
# standby after a failover, I/O errors, corruption): down at once, the others wake the check.
_DOWN = (
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.PostgresSystemError,
    asyncpg.exceptions.DataCorruptedError,
    asyncpg.exceptions.IndexCorruptedError,
)


class PostgresStore:
    """CredentialStore on PostgreSQL through an asyncpg pool."""

    def __init__(
        self,
        dsn: str,
        cipher: Cipher,
        timeout: float = 2.0,
        max_connections: int = 10,
        password: str | None = None,
    ):
        self.dsn = dsn
        self.address = _address(dsn)  # host:port, for failure lines (the DSN holds a password)
        self.episodes = Episodes(log)  # an outage logs its start, a line a minute, its end
        self.password = password
        self.cipher = cipher
        self.timeout = timeout
        self.max_connections = max_connections
        self._pool: Any = None
        self.origin: StoreOrigin | None = None

    async def open(self) -> None:
        try:
            try:
                self._pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=1,
                    max_size=self.max_connections,
                    command_timeout=self.timeout,
                    timeout=self.timeout,
                    # A callable is asked for every new connection, so a reloaded password
                    # applies without a restart. None: the URL's, or PGPASSWORD / .pgpass.
                    password=self._current_password if self.password is not None else None,
                )
            except (ValueError, OverflowError):
                # asyncpg's URL parsing: its message can quote a piece of the URL, such as part
                # of a password holding an unescaped `/` or `#`, so it is not repeated here.
                raise StoreOpenError(
                    "cannot open PostgreSQL store: store.url is not a valid PostgreSQL URL"
                    " (percent-encode special characters in the user name and password)"
                ) from None
            async with self._pool.acquire(timeout=self.timeout) as conn, conn.transaction():
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1)",
                    _MIGRATION_LOCK,
                    timeout=MIGRATION_LOCK_TIMEOUT,
                )
                self.origin = await bootstrap(_Session(conn), _META_TABLE, _MIGRATIONS, self.cipher)
        except (*_ERRORS, WrongKey) as exc:
            await self.close()
            raise StoreOpenError(
                f"cannot open PostgreSQL store at {self.address}: {type(exc).__name__}: {exc}"
            ) from None
        except BaseException:
            await self.close()
            raise
        announce(self.origin, "postgresql")

    def use_password(self, password: str) -> None:
        self.password = password  # asked for by every new pool connection

    def _current_password(self) -> str | None:
        return self.password

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except (*_ERRORS,):
                pool.terminate()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        if self._pool is None:
            raise StoreUnavailable
        try:
            async with self._pool.acquire(timeout=self.timeout) as conn:
                yield conn
        except _ERRORS as exc:
            fields = {"error": type(exc).__name__, "address": self.address}
            self.episodes.failed("store", "call", "store call failed", fields)
            if isinstance(exc, _DOWN):
                raise StoreDown(type(exc).__name__) from None
            raise StoreUnavailable from None
        self.episodes.succeeded("store")

    async def ping(self) -> None:
        # A write, not SELECT 1: a full disk or a read-only standby still answers reads.
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO gini_proxy_meta (name, value) VALUES ('heartbeat', $1)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                repr(time.time()).encode(),
            )

    async def get(self, key: str) -> StoredUser | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT email, password, state FROM anonymous_users WHERE user_key = $1", key
            )
        if row is None:
            return None
        email = row["email"]
        password = await open_sealed(self, key, email, bytes(row["password"]))
        return StoredUser(key, email, password, parse_state(row["state"]))

    async def claim(self, key: str, email: str, password: str) -> StoredUser:
        sealed = self.cipher.seal_password(key, email, password)
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO anonymous_users (user_key, email, password, state)"
                " VALUES ($1, $2, $3, 'pending') ON CONFLICT (user_key) DO NOTHING",
                key,
                email,
                sealed,
            )
        return await require_user(self, key)

    async def replace(self, key: str, old_email: str, email: str, password: str) -> StoredUser:
        sealed = self.cipher.seal_password(key, email, password)
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE anonymous_users SET email = $1, password = $2, state = 'pending',"
                " updated_at = now() WHERE user_key = $3 AND email = $4",
                email,
                sealed,
                key,
                old_email,
            )
        return await require_user(self, key)

    async def activate(self, key: str, email: str) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "UPDATE anonymous_users SET state = 'active', updated_at = now()"
                " WHERE user_key = $1 AND email = $2 AND state = 'pending'",
                key,
                email,
            )

    async def delete(self, key: str) -> bool:
        async with self._conn() as conn:
            status = await conn.execute("DELETE FROM anonymous_users WHERE user_key = $1", key)
        return bool(status != "DELETE 0")

    async def count(self) -> int:
        async with self._conn() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM anonymous_users"))

    async def get_meta(self, name: str) -> bytes | None:
        async with self._conn() as conn:
            value = await conn.fetchval("SELECT value FROM gini_proxy_meta WHERE name = $1", name)
        return None if value is None else bytes(value)

    async def setdefault_meta(self, name: str, value: bytes) -> bytes:
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO gini_proxy_meta (name, value) VALUES ($1, $2)"
                " ON CONFLICT (name) DO NOTHING",
                name,
                value,
            )
        stored = await self.get_meta(name)
        if stored is None:  # only a concurrent DELETE, which nothing here issues
            raise StoreUnavailable
        return stored

    async def replace_meta(self, name: str, old: bytes, new: bytes) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(
                "UPDATE gini_proxy_meta SET value = $1 WHERE name = $2 AND value = $3",
                new,
                name,
                old,
            )
        return bool(status == "UPDATE 1")

    async def sealed_rows(self, after: str, limit: int) -> list[SealedRow]:
        async with self._conn() as conn:
            rows = await conn.fetch(
                "SELECT user_key, email, password FROM anonymous_users"
                " WHERE user_key > $1 ORDER BY user_key LIMIT $2",
                after,
                limit,
            )
        return [SealedRow(r["user_key"], r["email"], bytes(r["password"])) for r in rows]

    async def sealed_row(self, key: str) -> SealedRow | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT email, password FROM anonymous_users WHERE user_key = $1", key
            )
        return None if row is None else SealedRow(key, row["email"], bytes(row["password"]))

    async def reseal(self, key: str, email: str, old: bytes, new: bytes) -> bool:
        async with self._conn() as conn:
            status = await conn.execute(
                "UPDATE anonymous_users SET password = $1"
                " WHERE user_key = $2 AND email = $3 AND password = $4",
                new,
                key,
                email,
                old,
            )
        return bool(status == "UPDATE 1")

    async def reseal_many(self, swaps: Sequence[tuple[SealedRow, bytes]]) -> set[str]:
        if not swaps:
            return set()
        async with self._conn() as conn:
            rows = await conn.fetch(
                "UPDATE anonymous_users AS u SET password = v.new"
                " FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[])"
                " AS v(user_key, email, old, new)"
                " WHERE u.user_key = v.user_key AND u.email = v.email AND u.password = v.old"
                " RETURNING u.user_key",
                [row.key for row, _ in swaps],
                [row.email for row, _ in swaps],
                [row.sealed for row, _ in swaps],
                [new for _, new in swaps],
            )
        return {row["user_key"] for row in rows}


class _Session:
    """The opening transaction's connection, as `schema.bootstrap` uses it."""

    def __init__(self, conn: Any):
        self.conn = conn

    async def run(self, statement: str) -> None:
        await self.conn.execute(statement)

    async def read_meta(self, name: str) -> bytes | None:
        value = await self.conn.fetchval("SELECT value FROM gini_proxy_meta WHERE name = $1", name)
        return bytes(value) if value is not None else None

    async def write_meta(self, name: str, value: bytes) -> None:
        await self.conn.execute(
            "INSERT INTO gini_proxy_meta (name, value) VALUES ($1, $2) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            name,
            value,
        )

    async def has_users(self) -> bool:
        return bool(await self.conn.fetchval("SELECT EXISTS (SELECT 1 FROM anonymous_users)"))


def _address(dsn: str) -> str:
    """host:port of the DSN, or "?" for one open() will refuse as invalid."""
    try:
        parts = urlsplit(dsn)
        port = parts.port or 5432
    except ValueError:
        return "?"
    return f"{parts.hostname or 'localhost'}:{port}"
