"""Opening a store, the same on every backend: the meta table, the schema migrations in order,
and the key check that refuses an `encryption_key` the rows were not written with.

Each backend supplies the SQL of its dialect and a `SchemaSession` over one transaction (the
caller holds its backend's lock, so replicas starting together migrate once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from proxy.vending.stores.base import StoreOpenError, StoreOrigin

if TYPE_CHECKING:
    from proxy.vending.stores.cipher import Cipher

log = logging.getLogger("proxy.store")

SCHEMA_VERSION = 1
"""The schema this build writes; a store at a later version is refused, not downgraded."""


def meta_table(blob: str) -> str:
    """Name -> value pairs of the store itself: schema version, key check, creation time,
    identity key id, and the heartbeat row the health check writes."""
    return (
        f"CREATE TABLE IF NOT EXISTS gini_proxy_meta (name TEXT PRIMARY KEY, value {blob} NOT NULL)"
    )


def anonymous_users_table(blob: str, timestamp: str) -> str:
    """Version 1: one row per anonymous user, in the backend's column types."""
    return f"""CREATE TABLE anonymous_users (
               user_key   TEXT PRIMARY KEY,
               email      TEXT NOT NULL,
               password   {blob} NOT NULL,
               state      TEXT NOT NULL CHECK (state IN ('pending', 'active')),
               created_at {timestamp},
               updated_at {timestamp}
           )"""


class SchemaSession(Protocol):
    """One backend connection inside the opening transaction."""

    async def run(self, statement: str) -> None: ...
    async def read_meta(self, name: str) -> bytes | None: ...
    async def write_meta(self, name: str, value: bytes) -> None: ...
    async def has_users(self) -> bool: ...


async def bootstrap(
    session: SchemaSession,
    meta_table: str,
    migrations: Mapping[int, Sequence[str]],
    cipher: Cipher,
) -> StoreOrigin:
    """Create the meta table, migrate up to SCHEMA_VERSION, then check (or, on a new store,
    record) the key check value. Raises StoreOpenError, or WrongKey from the cipher."""
    await session.run(meta_table)
    version = await session.read_meta("schema_version")
    current = int(version) if version is not None else 0
    if current > SCHEMA_VERSION:
        raise StoreOpenError(
            f"the store has schema version {current}; this build knows {SCHEMA_VERSION}"
        )
    for number in range(current + 1, SCHEMA_VERSION + 1):
        for statement in migrations[number]:
            await session.run(statement)
    await session.write_meta("schema_version", str(SCHEMA_VERSION).encode())
    check = await session.read_meta("key_check")
    if check is not None:
        cipher.verify(check)
        return StoreOrigin(
            created_fresh=False, created_at=_time(await session.read_meta("created_at"))
        )
    if await session.has_users():
        # Writing a new key check here would accept any key and hide the damage.
        raise StoreOpenError(
            "the store holds anonymous users but no key check: its metadata was lost (a partial "
            "restore, or a damaged or lost SQLite file or WAL). Refusing to start on a store "
            "whose encryption key cannot be verified; restore the whole store from a backup"
        )
    now = time.time()
    await session.write_meta("key_check", cipher.check_value())
    await session.write_meta("created_at", repr(now).encode())
    return StoreOrigin(created_fresh=True, created_at=now)


def _time(value: bytes | None) -> float | None:
    """A recorded time; None when absent (older stores) or unreadable (it is only shown)."""
    try:
        return float(value) if value else None
    except ValueError:
        return None


def announce(origin: StoreOrigin, kind: str) -> None:
    """Say loudly that a store was created empty: expected once per deployment, and a sign of
    a wrong `store.url` or a lost volume every other time."""
    if origin.created_fresh:
        log.warning(
            "created a new, empty credential store. Expected on a deployment's first start "
            "only: if anonymous users were stored before, this is not their store (a wrong "
            "store.url, a new volume, a lost file) and each of them would become a new, empty "
            "Gini user. Then stop the proxy and restore the store",
            extra={"store": kind},
        )
