"""Credential-store test support: a throwaway PostgreSQL schema per test, raw table access.

PostgreSQL comes from `GINI_PROXY_TEST_POSTGRES_DSN` (default: the local `test` database).
When it cannot be reached, tests that need it are skipped with the reason shown by `-ra`;
with `CI=true` they fail instead, so a broken CI service is never mistaken for a green run.

Each test gets its own schema `gp_test_<random>`, reached through `?search_path=<schema>` in
the DSN (asyncpg sends unknown DSN query parameters as server settings) and dropped with
CASCADE afterwards, so concurrent runs against one database never see each other's rows.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing, contextmanager, suppress
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from proxy.vending.stores.base import CredentialStore
from proxy.vending.stores.cipher import Cipher
from proxy.vending.stores.postgres import PostgresStore
from proxy.vending.stores.sqlite import SqliteStore

POSTGRES_DSN_ENV = "GINI_PROXY_TEST_POSTGRES_DSN"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
CONNECT_TIMEOUT = 3.0

STORE_KEY = bytes(range(32))
OTHER_STORE_KEY = bytes(range(100, 132))
THIRD_STORE_KEY = bytes(range(200, 232))

_unreachable: str | None = None  # remembered so a down server costs one timeout, not one per test


def postgres_dsn() -> str:
    return os.environ.get(POSTGRES_DSN_ENV) or DEFAULT_POSTGRES_DSN


def with_search_path(dsn: str, schema: str) -> str:
    """`dsn` with its `search_path` query parameter set to `schema` (others kept)."""
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "search_path"]
    query.append(("search_path", schema))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _redacted(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _unavailable(reason: str) -> NoReturn:
    message = f"PostgreSQL unavailable ({reason}); set {POSTGRES_DSN_ENV} to run these tests"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(message)


async def admin_connection(dsn: str | None = None) -> Any:
    """A direct asyncpg connection to the test database; skips (or fails on CI) if down."""
    global _unreachable  # noqa: PLW0603
    dsn = dsn or postgres_dsn()
    if _unreachable is not None:
        _unavailable(_unreachable)
    try:
        return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        _unreachable = f"{_redacted(dsn)}: {type(exc).__name__}: {exc}"
        _unavailable(_unreachable)


@asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """Create a fresh schema; yield a DSN whose search_path is that schema; drop it after."""
    base = postgres_dsn()
    schema = f"gp_test_{secrets.token_hex(6)}"
    conn = await admin_connection(base)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    try:
        yield with_search_path(base, schema)
    finally:
        conn = await asyncpg.connect(base, timeout=CONNECT_TIMEOUT)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


class Backend:
    """One store location (a SQLite file or a PostgreSQL schema) and raw access to its tables."""

    kind: str

    def new_store(self, key: bytes = STORE_KEY) -> CredentialStore:
        """An unopened store on this location."""
        raise NotImplementedError

    def keyring_store(self, key: bytes, *previous: bytes) -> CredentialStore:
        """An unopened store on this location whose cipher also opens with `previous` keys."""
        store = self.new_store(key)
        store.cipher = Cipher(key, previous)
        return store

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Run `sql` outside the store (placeholders: `?` for SQLite, `$n` for PostgreSQL)."""
        raise NotImplementedError

    async def execute(self, sql: str, *args: object) -> None:
        raise NotImplementedError

    def param(self, n: int) -> str:
        """The placeholder for the n-th (1-based) parameter."""
        raise NotImplementedError

    async def raw_row(self, key: str) -> tuple[str, bytes, str] | None:
        """(email, sealed password, state) exactly as stored."""
        rows = await self.fetch(
            f"SELECT email, password, state FROM anonymous_users WHERE user_key = {self.param(1)}",
            key,
        )
        if not rows:
            return None
        email, password, state = rows[0]
        return str(email), bytes(password), str(state)

    async def meta(self, name: str) -> bytes | None:
        rows = await self.fetch(
            f"SELECT value FROM gini_proxy_meta WHERE name = {self.param(1)}", name
        )
        return bytes(rows[0][0]) if rows else None

    async def set_meta(self, name: str, value: bytes) -> None:
        await self.execute(
            f"UPDATE gini_proxy_meta SET value = {self.param(1)} WHERE name = {self.param(2)}",
            value,
            name,
        )


class SqliteBackend(Backend):
    kind = "sqlite"

    def __init__(self, path: Path):
        self.path = path

    def new_store(self, key: bytes = STORE_KEY) -> SqliteStore:
        return SqliteStore(self.path, Cipher(key))

    def param(self, n: int) -> str:
        return "?"

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.path)) as db:
            return list(db.execute(sql, args).fetchall())

    async def execute(self, sql: str, *args: object) -> None:
        with closing(sqlite3.connect(self.path)) as db:
            db.execute(sql, args)
            db.commit()


class PostgresBackend(Backend):
    kind = "postgres"

    def __init__(self, dsn: str):
        self.dsn = dsn

    def new_store(self, key: bytes = STORE_KEY, timeout: float = 5.0) -> PostgresStore:
        return PostgresStore(self.dsn, Cipher(key), timeout=timeout)

    def param(self, n: int) -> str:
        return f"${n}"

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT)
        try:
            return [tuple(row) for row in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    async def execute(self, sql: str, *args: object) -> None:
        conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()


@asynccontextmanager
async def backend_for(kind: str, tmp_path: Path) -> AsyncIterator[Backend]:
    """A fresh, empty location for `kind` ("sqlite" or "postgres"), cleaned up afterwards."""
    if kind == "sqlite":
        yield SqliteBackend(tmp_path / "store.db")
    elif kind == "postgres":
        async with postgres_schema() as dsn:
            yield PostgresBackend(dsn)
    else:
        raise ValueError(f"unknown store backend {kind!r}")


@asynccontextmanager
async def opened(store: CredentialStore) -> AsyncIterator[CredentialStore]:
    """`store`, opened for the duration of the block and closed after."""
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextmanager
def small_volume(where: Path, size: str = "2m") -> Iterator[Path]:
    """A real filesystem of `size` (tmpfs) mounted at `where`, unmounted afterwards.

    Needs root and a kernel that allows the mount (a privileged container, a CI runner): skipped
    with the reason otherwise, and failed instead under `CI=true`, where it must run.
    """
    where.mkdir()
    if shutil.which("mount") is None:
        _no_volume("no mount command")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        _no_volume(mounted.stderr.strip() or f"mount exited {mounted.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _no_volume(reason: str) -> NoReturn:
    message = f"cannot mount a small tmpfs here ({reason}; needs root)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(message)


def fill(volume: Path) -> Path:
    """Fill `volume` to the last byte with one file (delete it to give the space back)."""
    filler = volume / "filler"
    chunk = b"\0" * 4096
    with filler.open("wb", buffering=0) as out:
        with suppress(OSError):  # ENOSPC: full
            while True:
                out.write(chunk)
        with suppress(OSError):
            while True:  # the last partial block
                out.write(b"\0")
    return filler
