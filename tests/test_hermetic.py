"""The suite is hermetic: PostgreSQL tests use the documented server and a schema of their own.

A scratch database gets what a shared `test` database may already hold: another application's
tables in `public`, and a gini-auth-proxy store made there with another encryption key and
another identity key. The PostgreSQL tests then run twice against it, in a pytest subprocess,
and must pass without touching any of it. The database is ours alone (created and dropped
here), so tests that other people run at the same time against the usual database never see it.
A static check adds what a run cannot see: a test that connects to a server of its own choosing.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from proxy.vending.keyguard import check_store
from proxy.vending.stores.cipher import Cipher
from proxy.vending.stores.postgres import PostgresStore

from .stores_support import (
    CONNECT_TIMEOUT,
    OTHER_STORE_KEY,
    POSTGRES_DSN_ENV,
    admin_connection,
    postgres_dsn,
    with_search_path,
)

ROOT = Path(__file__).resolve().parent.parent
RUNS = 2
FOREIGN_TABLES = """
CREATE TABLE public.customers (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE public.users (id serial PRIMARY KEY, email text NOT NULL, password text);
INSERT INTO public.customers (name) VALUES ('ACME'), ('Initech');
INSERT INTO public.users (email, password) VALUES ('someone@example.com', 'not-ours');
"""
FOREIGN_IDENTITY_KEY_ID = "fedcba9876543210"


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


@pytest.fixture
async def crowded_database() -> AsyncIterator[str]:
    """A new database whose `public` schema is full of things that are not the tests'."""
    base = postgres_dsn()
    name = f"gp_hermetic_{secrets.token_hex(4)}"
    conn = await admin_connection(base)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.InsufficientPrivilegeError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("the PostgreSQL test role may not create databases")
    finally:
        await conn.close()
    dsn = with_database(base, name)
    try:
        await seed(dsn)
        yield dsn
    finally:
        conn = await asyncpg.connect(base, timeout=CONNECT_TIMEOUT)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def seed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    try:
        await conn.execute(FOREIGN_TABLES)
    finally:
        await conn.close()
    other = PostgresStore(with_search_path(dsn, "public"), Cipher(OTHER_STORE_KEY))
    await other.open()
    try:
        await check_store(other, FOREIGN_IDENTITY_KEY_ID)
        user = await other.claim("f" * 64, "foreign@anon.example.com", "foreign-password")
        await other.activate(user.key, user.email)
    finally:
        await other.close()


async def snapshot(dsn: str) -> dict[str, Any]:
    """Everything in `public`, and the schemas besides it."""
    conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    try:
        tables = [
            r["tablename"]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        rows = {
            table: sorted(tuple(r) for r in await conn.fetch(f'SELECT * FROM public."{table}"'))
            for table in tables
        }
        schemas = sorted(
            r["nspname"]
            for r in await conn.fetch(
                "SELECT nspname FROM pg_namespace"
                " WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'"
            )
        )
    finally:
        await conn.close()
    return {"tables": tables, "rows": rows, "schemas": schemas}


async def run_postgres_tests(dsn: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-m", "postgres and not slow", "-q",
        "-p", "no:cacheprovider", "--ignore", str(Path(__file__)), "tests",
        cwd=ROOT,
        # CI=true: a PostgreSQL test that cannot reach the server fails instead of skipping.
        env={**os.environ, POSTGRES_DSN_ENV: dsn, "CI": "true"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 900)
    return await process.wait(), output.decode(errors="replace")


@pytest.mark.slow
@pytest.mark.postgres
async def test_postgres_tests_pass_twice_beside_foreign_tables_and_a_foreign_store(
    crowded_database: str,
) -> None:
    before = await snapshot(crowded_database)
    assert {"customers", "users", "gini_proxy_meta", "anonymous_users"} <= set(before["tables"])
    for run in range(RUNS):
        code, output = await run_postgres_tests(crowded_database)
        tail = output[-3000:]
        assert code == 0, f"run {run + 1}:\n{tail}"
        passed = re.search(r"(\d+) passed", output)
        assert passed is not None, tail
        assert int(passed.group(1)) >= 20, tail  # the PostgreSQL tests did run
        assert "skipped" not in output.splitlines()[-1], tail
        assert await snapshot(crowded_database) == before  # nothing touched, nothing left


# --- what a run cannot see ----------------------------------------------------------------

URL = re.compile(r"""(?:postgres(?:ql)?|rediss?)://[^\s"'`]*""")
LOOPBACK = re.compile(r"@(?:127\.0\.0\.1|localhost|\[::1\])(?::(\d+))?(?:/|$)|^redis://127")


def test_no_test_picks_its_own_postgres_or_redis_server() -> None:
    """Loopback URLs in tests name a refused (1) or invalid port, or one the test opened; the
    documented servers come only from GINI_PROXY_TEST_POSTGRES_DSN / GINI_PROXY_TEST_REDIS_URL
    and their one default each."""
    defaults = {
        ("stores_support.py", "postgresql://postgres@127.0.0.1:5432/test"),
        ("conftest.py", "redis://127.0.0.1:6379/0"),
    }
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if path == Path(__file__).resolve():
            continue
        for url in URL.findall(path.read_text()):
            loopback = LOOPBACK.search(url)
            if loopback is None or (path.name, url) in defaults:
                continue
            port = loopback.group(1) if loopback.lastindex else None
            if port == "1" or (port and int(port) > 65535) or "{" in url:
                continue  # refused or invalid on purpose, or a port picked at run time
            found.append(f"{path.relative_to(ROOT)}: {url}")
    assert not found, "hard-coded servers (use the documented environment variables):\n" + (
        "\n".join(found)
    )
