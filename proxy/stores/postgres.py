"""PostgreSQL credential store: several replicas share one set of anonymous users.

Schema changes run under a transaction-scoped advisory lock, so replicas starting together
migrate once. Every call has a timeout (pool acquire and statement).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from ..errors import StoreUnavailable
from .base import StoredUser, StoreOpenError, parse_state, require_user
from .cipher import Cipher, WrongKey

log = logging.getLogger("proxy.store")

SCHEMA_VERSION = 1
_MIGRATION_LOCK = 0x67696E69_70727879  # "giniprxy": any constant shared by all replicas
_MIGRATIONS = {
    1: (
        """CREATE TABLE anonymous_users (
               user_key   TEXT PRIMARY KEY,
               email      TEXT NOT NULL,
               password   BYTEA NOT NULL,
               state      TEXT NOT NULL CHECK (state IN ('pending', 'active')),
               created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
               updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
           )""",
    ),
}
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)


class PostgresStore:
    """CredentialStore on PostgreSQL through an asyncpg pool."""

    def __init__(
        self,
        dsn: str,
        cipher: Cipher,
        timeout: float = 5.0,
        max_connections: int = 10,
        password: str | None = None,
    ):
        self.dsn = dsn
        self.password = password
        self.cipher = cipher
        self.timeout = timeout
        self.max_connections = max_connections
        self._pool: Any = None

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
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await self._migrate(conn)
        except (*_ERRORS, WrongKey) as exc:
            await self.close()
            raise StoreOpenError(
                f"cannot open PostgreSQL store: {type(exc).__name__}: {exc}"
            ) from None
        except BaseException:
            await self.close()
            raise

    def _current_password(self) -> str | None:
        return self.password

    async def _migrate(self, conn: Any) -> None:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS gini_proxy_meta"
            " (name TEXT PRIMARY KEY, value BYTEA NOT NULL)"
        )
        version = await conn.fetchval(
            "SELECT value FROM gini_proxy_meta WHERE name = 'schema_version'"
        )
        current = int(bytes(version).decode()) if version is not None else 0
        if current > SCHEMA_VERSION:
            raise StoreOpenError(
                f"the store has schema version {current}; this build knows {SCHEMA_VERSION}"
            )
        for number in range(current + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[number]:
                await conn.execute(statement)
        await conn.execute(
            "INSERT INTO gini_proxy_meta (name, value) VALUES ('schema_version', $1) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            str(SCHEMA_VERSION).encode(),
        )
        check = await conn.fetchval("SELECT value FROM gini_proxy_meta WHERE name = 'key_check'")
        if check is None:
            await conn.execute(
                "INSERT INTO gini_proxy_meta (name, value) VALUES ('key_check', $1)",
                self.cipher.check_value(),
            )
        else:
            self.cipher.verify(bytes(check))

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
            log.warning("store call failed", extra={"error": type(exc).__name__})
            raise StoreUnavailable from None

    async def ping(self) -> None:
        async with self._conn() as conn:
            await conn.fetchval("SELECT 1")

    async def get(self, key: str) -> StoredUser | None:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                "SELECT email, password, state FROM anonymous_users WHERE user_key = $1", key
            )
        if row is None:
            return None
        email = row["email"]
        password = self.cipher.open_password(key, email, bytes(row["password"]))
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
