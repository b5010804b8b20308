"""The credential-store contract, run against SQLite and PostgreSQL, plus backend specifics.

PostgreSQL tests carry the `postgres` marker (`-m "not postgres"` leaves them out); see
`tests/stores_support.py` for where the server comes from and how tests are isolated.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sqlite3
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from proxy.config import StoreConfig
from proxy.config.secret import Secret
from proxy.errors import StoreUnavailable
from proxy.vending.stores import make_store
from proxy.vending.stores.base import CredentialStore, StoredUser, StoreOpenError
from proxy.vending.stores.cipher import NONCE_BYTES, VERSION, Cipher, WrongKey
from proxy.vending.stores.keyring import rotate
from proxy.vending.stores.postgres import PostgresStore
from proxy.vending.stores.sqlite import SqliteStore

from .stores_support import (
    OTHER_STORE_KEY,
    STORE_KEY,
    THIRD_STORE_KEY,
    Backend,
    PostgresBackend,
    SqliteBackend,
    backend_for,
    opened,
)

KEY_A = "a" * 64  # derived identifiers are lowercase hex HMAC-SHA256
KEY_B = "b" * 64
EMAIL_1 = "11111111-1111-4111-8111-111111111111@anon.example.com"
EMAIL_2 = "22222222-2222-4222-8222-222222222222@anon.example.com"
PASSWORD_1 = "first-password-Zk3vQ9xLr2"
PASSWORD_2 = "second-password-Hn8wT4pYc6"
TAG_BYTES = 16


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A fresh store location: a SQLite file in tmp_path, or a throwaway PostgreSQL schema."""
    async with backend_for(request.param, tmp_path) as location:
        yield location


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[CredentialStore]:
    """An opened store on `backend`, closed after the test."""
    async with opened(backend.new_store()) as opened_store:
        yield opened_store


@pytest.fixture
async def sqlite_backend(tmp_path: Path) -> AsyncIterator[SqliteBackend]:
    async with backend_for("sqlite", tmp_path) as location:
        assert isinstance(location, SqliteBackend)
        yield location


@pytest.fixture
async def postgres_backend(tmp_path: Path) -> AsyncIterator[PostgresBackend]:
    async with backend_for("postgres", tmp_path) as location:
        assert isinstance(location, PostgresBackend)
        yield location


# --- the contract ---------------------------------------------------------------------------


async def test_get_on_an_empty_store_is_none(store: CredentialStore) -> None:
    assert await store.get(KEY_A) is None
    assert await store.count() == 0


async def test_claim_stores_pending_credentials_and_returns_them(store: CredentialStore) -> None:
    claimed = await store.claim(KEY_A, EMAIL_1, PASSWORD_1)

    assert claimed == StoredUser(KEY_A, EMAIL_1, PASSWORD_1, "pending")
    assert await store.get(KEY_A) == claimed


async def test_a_second_claim_returns_the_first_row(store: CredentialStore) -> None:
    first = await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    second = await store.claim(KEY_A, EMAIL_2, PASSWORD_2)

    assert second == first
    assert await store.get(KEY_A) == first
    assert await store.count() == 1


async def test_a_claim_does_not_reset_an_active_row(store: CredentialStore) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    await store.activate(KEY_A, EMAIL_1)

    again = await store.claim(KEY_A, EMAIL_2, PASSWORD_2)

    assert again == StoredUser(KEY_A, EMAIL_1, PASSWORD_1, "active")


async def test_concurrent_claims_for_one_key_all_get_the_same_row(store: CredentialStore) -> None:
    results = await asyncio.gather(
        *(store.claim(KEY_A, f"user-{i}@anon.example.com", f"password-{i}") for i in range(50))
    )

    assert len(set(results)) == 1
    winner = results[0]
    assert winner.state == "pending"
    assert winner.password == f"password-{winner.email.split('@')[0].removeprefix('user-')}"
    assert await store.get(KEY_A) == winner
    assert await store.count() == 1


async def test_claims_for_different_keys_are_independent(store: CredentialStore) -> None:
    a = await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    b = await store.claim(KEY_B, EMAIL_2, PASSWORD_2)

    assert (a.email, b.email) == (EMAIL_1, EMAIL_2)
    assert await store.get(KEY_A) == a
    assert await store.get(KEY_B) == b


async def test_replace_with_a_stale_email_leaves_the_row_alone(store: CredentialStore) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    await store.activate(KEY_A, EMAIL_1)

    result = await store.replace(KEY_A, "stale@anon.example.com", EMAIL_2, PASSWORD_2)

    assert result == StoredUser(KEY_A, EMAIL_1, PASSWORD_1, "active")
    assert await store.get(KEY_A) == result


async def test_replace_with_the_current_email_swaps_in_pending_credentials(
    store: CredentialStore,
) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    await store.activate(KEY_A, EMAIL_1)

    result = await store.replace(KEY_A, EMAIL_1, EMAIL_2, PASSWORD_2)

    assert result == StoredUser(KEY_A, EMAIL_2, PASSWORD_2, "pending")
    assert await store.get(KEY_A) == result
    assert await store.count() == 1


async def test_concurrent_replaces_of_one_row_have_one_winner(store: CredentialStore) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)

    results = await asyncio.gather(
        *(
            store.replace(KEY_A, EMAIL_1, f"new-{i}@anon.example.com", f"password-{i}")
            for i in range(10)
        )
    )

    stored = await store.get(KEY_A)
    assert stored is not None
    assert stored.email.startswith("new-")
    assert all(result == stored for result in results)


async def test_replace_of_a_deleted_row_is_unavailable(store: CredentialStore) -> None:
    with pytest.raises(StoreUnavailable):
        await store.replace(KEY_A, EMAIL_1, EMAIL_2, PASSWORD_2)
    assert await store.get(KEY_A) is None


async def test_activate_needs_the_current_email(store: CredentialStore) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)

    await store.activate(KEY_A, EMAIL_2)
    assert (await store.get(KEY_A)) == StoredUser(KEY_A, EMAIL_1, PASSWORD_1, "pending")

    await store.activate(KEY_A, EMAIL_1)
    assert (await store.get(KEY_A)) == StoredUser(KEY_A, EMAIL_1, PASSWORD_1, "active")

    await store.activate(KEY_A, EMAIL_1)  # idempotent
    assert (await store.get(KEY_A)) == StoredUser(KEY_A, EMAIL_1, PASSWORD_1, "active")


async def test_activate_of_a_missing_row_creates_nothing(store: CredentialStore) -> None:
    await store.activate(KEY_A, EMAIL_1)
    assert await store.get(KEY_A) is None


async def test_delete_forgets_the_row_once(store: CredentialStore) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    await store.claim(KEY_B, EMAIL_2, PASSWORD_2)

    assert await store.delete(KEY_A) is True
    assert await store.delete(KEY_A) is False
    assert await store.get(KEY_A) is None
    assert await store.get(KEY_B) is not None


async def test_a_claim_after_delete_stores_new_credentials(store: CredentialStore) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    await store.delete(KEY_A)

    again = await store.claim(KEY_A, EMAIL_2, PASSWORD_2)

    assert again == StoredUser(KEY_A, EMAIL_2, PASSWORD_2, "pending")


async def test_count(store: CredentialStore) -> None:
    for i in range(5):
        await store.claim(f"{i:064x}", f"user-{i}@anon.example.com", f"password-{i}")
    await store.claim(f"{0:064x}", EMAIL_1, PASSWORD_1)  # no new row
    assert await store.count() == 5

    await store.delete(f"{3:064x}")
    assert await store.count() == 4


@pytest.mark.parametrize(
    "password", ["x", "a-typical-token_urlsafe-value-0123456789abcdefABCDEF", "pässwört ✓ 密码"]
)
async def test_passwords_decrypt_to_what_was_stored(store: CredentialStore, password: str) -> None:
    await store.claim(KEY_A, EMAIL_1, password)
    stored = await store.get(KEY_A)
    assert stored is not None
    assert stored.password == password


async def test_stored_passwords_are_encrypted_with_a_fresh_nonce(
    backend: Backend, store: CredentialStore
) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    await store.claim(KEY_B, EMAIL_1, PASSWORD_1)  # same email and password: only the key differs

    row_a, row_b = await backend.raw_row(KEY_A), await backend.raw_row(KEY_B)
    assert row_a is not None
    assert row_b is not None
    sealed_a, sealed_b = row_a[1], row_b[1]
    for sealed in (sealed_a, sealed_b):
        assert PASSWORD_1.encode() not in sealed
        assert sealed[:1] == VERSION
        assert len(sealed) == 1 + NONCE_BYTES + len(PASSWORD_1.encode()) + TAG_BYTES
    assert sealed_a != sealed_b
    assert sealed_a[1 : 1 + NONCE_BYTES] != sealed_b[1 : 1 + NONCE_BYTES]


async def test_reclaiming_the_same_password_for_one_row_gives_new_ciphertext(
    backend: Backend, store: CredentialStore
) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    first = await backend.raw_row(KEY_A)
    await store.delete(KEY_A)
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    second = await backend.raw_row(KEY_A)

    assert first is not None
    assert second is not None
    assert first[1] != second[1]


async def test_a_ciphertext_copied_to_another_row_does_not_decrypt(
    backend: Backend, store: CredentialStore, caplog: pytest.LogCaptureFixture
) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    await store.claim(KEY_B, EMAIL_1, PASSWORD_2)
    row_a = await backend.raw_row(KEY_A)
    assert row_a is not None

    p = backend.param
    await backend.execute(
        f"UPDATE anonymous_users SET password = {p(1)} WHERE user_key = {p(2)}", row_a[1], KEY_B
    )

    with pytest.raises(StoreUnavailable) as caught:
        await store.get(KEY_B)
    assert PASSWORD_1 not in str(caught.value)
    errors = [r for r in caplog.records if r.name == "proxy.store" and r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == ["a stored credential could not be decrypted"]
    assert PASSWORD_1 not in caplog.text
    assert KEY_B not in caplog.text
    assert (await store.get(KEY_A)) == StoredUser(KEY_A, EMAIL_1, PASSWORD_1, "pending")


async def test_a_ciphertext_moved_to_another_email_does_not_decrypt(
    backend: Backend, store: CredentialStore
) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)

    p = backend.param
    await backend.execute(
        f"UPDATE anonymous_users SET email = {p(1)} WHERE user_key = {p(2)}", EMAIL_2, KEY_A
    )

    with pytest.raises(StoreUnavailable):
        await store.get(KEY_A)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda sealed: b"", id="empty"),
        pytest.param(lambda sealed: sealed[:1], id="version-only"),
        pytest.param(lambda sealed: sealed[:8], id="short-nonce"),
        pytest.param(lambda sealed: sealed[: 1 + NONCE_BYTES + 3], id="short-tag"),
        pytest.param(lambda sealed: b"\x02" + sealed[1:], id="unknown-version"),
        pytest.param(lambda sealed: sealed[:-1] + bytes([sealed[-1] ^ 1]), id="flipped-bit"),
    ],
)
async def test_a_damaged_ciphertext_makes_get_unavailable(
    backend: Backend, store: CredentialStore, damage: Callable[[bytes], bytes]
) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    row = await backend.raw_row(KEY_A)
    assert row is not None

    p = backend.param
    await backend.execute(
        f"UPDATE anonymous_users SET password = {p(1)} WHERE user_key = {p(2)}",
        damage(row[1]),
        KEY_A,
    )

    with pytest.raises(StoreUnavailable):
        await store.get(KEY_A)


async def test_reopening_with_another_key_is_refused(
    backend: Backend, store: CredentialStore
) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    await store.close()

    other = backend.new_store(OTHER_STORE_KEY)
    with pytest.raises(StoreOpenError) as caught:
        await other.open()

    message = str(caught.value)
    assert "encryption_key" in message
    for key in (STORE_KEY, OTHER_STORE_KEY):
        for rendering in (key.hex(), base64.b64encode(key).decode(), repr(key)[2:-1]):
            assert rendering not in message
    assert PASSWORD_1 not in message
    with pytest.raises(StoreUnavailable):  # a failed open leaves nothing half-open
        await other.ping()
    await other.close()


async def test_reopening_with_the_same_key_keeps_the_data(
    backend: Backend, store: CredentialStore
) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    await store.activate(KEY_A, EMAIL_1)
    await store.claim(KEY_B, EMAIL_2, PASSWORD_2)
    await store.close()

    async with opened(backend.new_store(STORE_KEY)) as reopened:
        assert await reopened.get(KEY_A) == StoredUser(KEY_A, EMAIL_1, PASSWORD_1, "active")
        assert await reopened.get(KEY_B) == StoredUser(KEY_B, EMAIL_2, PASSWORD_2, "pending")
        assert await reopened.count() == 2


async def test_the_schema_version_is_recorded(backend: Backend, store: CredentialStore) -> None:
    assert await backend.meta("schema_version") == b"1"
    key_check = await backend.meta("key_check")
    assert key_check is not None
    assert b"key check" not in key_check
    Cipher(STORE_KEY).verify(key_check)


async def test_a_newer_schema_version_is_refused(backend: Backend, store: CredentialStore) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    await store.close()
    await backend.set_meta("schema_version", b"2")

    newer = backend.new_store()
    with pytest.raises(StoreOpenError, match="schema version 2"):
        await newer.open()
    await newer.close()
    assert await backend.meta("schema_version") == b"2"  # left as it was


async def test_ping_answers_while_open(store: CredentialStore) -> None:
    await store.ping()


async def test_every_call_after_close_is_unavailable(store: CredentialStore) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    await store.close()
    await store.close()  # twice is fine

    calls: list[Callable[[], Awaitable[Any]]] = [
        store.ping,
        lambda: store.get(KEY_A),
        lambda: store.claim(KEY_B, EMAIL_2, PASSWORD_2),
        lambda: store.replace(KEY_A, EMAIL_1, EMAIL_2, PASSWORD_2),
        lambda: store.activate(KEY_A, EMAIL_1),
        lambda: store.delete(KEY_A),
        store.count,
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable):
            await call()


async def test_stored_user_repr_hides_the_password(store: CredentialStore) -> None:
    user = await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    assert PASSWORD_1 not in repr(user)


# --- SQLite specifics -----------------------------------------------------------------------


async def test_sqlite_file_is_created_owner_only(sqlite_backend: SqliteBackend) -> None:
    async with opened(sqlite_backend.new_store()) as store:
        await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
        assert stat.S_IMODE(sqlite_backend.path.stat().st_mode) == 0o600
        wal = sqlite_backend.path.with_name(sqlite_backend.path.name + "-wal")
        assert wal.exists()
        assert stat.S_IMODE(wal.stat().st_mode) & 0o077 == 0


async def test_sqlite_existing_world_readable_file_is_tightened(
    sqlite_backend: SqliteBackend, caplog: pytest.LogCaptureFixture
) -> None:
    sqlite_backend.path.touch()
    os.chmod(sqlite_backend.path, 0o644)

    async with opened(sqlite_backend.new_store()):
        assert stat.S_IMODE(sqlite_backend.path.stat().st_mode) == 0o600
    assert any("0600" in record.getMessage() for record in caplog.records)


async def test_sqlite_missing_folder_is_refused(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "missing" / "store.db", Cipher(STORE_KEY))
    with pytest.raises(StoreOpenError, match="folder"):
        await store.open()
    assert not (tmp_path / "missing").exists()


async def test_sqlite_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"this is not an SQLite database, just some text " * 100)
    store = SqliteStore(path, Cipher(STORE_KEY))
    with pytest.raises(StoreOpenError):
        await store.open()
    await store.close()


async def test_sqlite_uses_the_wal_journal(sqlite_backend: SqliteBackend) -> None:
    async with opened(sqlite_backend.new_store()):
        with closing(sqlite3.connect(sqlite_backend.path)) as db:
            (mode,) = db.execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"


async def test_sqlite_stores_opening_one_fresh_file_together_all_succeed(tmp_path: Path) -> None:
    # Two processes on one volume (an overlapping restart) may open a new file at the same time;
    # several rounds, because the race is narrow.
    for round_ in range(30):
        path = tmp_path / f"store-{round_}.db"
        stores = [SqliteStore(path, Cipher(STORE_KEY)) for _ in range(4)]
        try:
            await asyncio.gather(*(store.open() for store in stores))
            results = await asyncio.gather(
                *(stores[i % 4].claim(KEY_A, f"user-{i}@anon.example.com", "pw") for i in range(8))
            )
            assert len({result.email for result in results}) == 1
        finally:
            for store in stores:
                await store.close()


async def test_sqlite_users_on_three_connections_to_one_file_interleave_without_errors(
    tmp_path: Path,
) -> None:
    # Three replicas on one volume, each with its own connection and many users in flight.
    # A statement of one call must never run while another call's cursor is open on the same
    # connection: a checkpoint then fails with SQLITE_LOCKED, and a write with SQLITE_BUSY.
    path = tmp_path / "shared.db"
    stores = [SqliteStore(path, Cipher(STORE_KEY)) for _ in range(3)]

    async def one_user(i: int) -> None:
        key, email = f"{i:064x}", f"user-{i}@anon.example.com"
        for store in stores:
            assert await store.get(key) is None
        claimed = await stores[i % 3].claim(key, email, "pw")
        assert await stores[(i + 1) % 3].get(key) == claimed
        await stores[(i + 2) % 3].activate(key, claimed.email)
        user = await stores[i % 3].get(key)
        assert user is not None
        assert user.state == "active"

    try:
        await asyncio.gather(*(store.open() for store in stores))
        await asyncio.gather(*(one_user(i) for i in range(60)))
        assert await stores[0].count() == 60
    finally:
        for store in stores:
            await store.close()


async def test_sqlite_damaged_key_check_is_refused_at_open(sqlite_backend: SqliteBackend) -> None:
    async with opened(sqlite_backend.new_store()):
        pass
    await sqlite_backend.set_meta("key_check", b"\x01short")

    store = sqlite_backend.new_store()
    with pytest.raises(StoreOpenError, match="encryption_key"):
        await store.open()
    await store.close()


async def test_make_store_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    key = Secret(base64.b64encode(STORE_KEY).decode(), "test")
    path = tmp_path / "made.db"

    sqlite_store = make_store(StoreConfig(url=f"sqlite:///{path}", encryption_key=key))
    assert isinstance(sqlite_store, SqliteStore)
    assert sqlite_store.path == path
    async with opened(sqlite_store):
        await sqlite_store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    assert path.exists()

    postgres_store = make_store(StoreConfig(url="postgresql://u@db.invalid/x", encryption_key=key))
    assert isinstance(postgres_store, PostgresStore)


# --- PostgreSQL specifics -------------------------------------------------------------------


async def test_postgres_unreachable_server_fails_open_fast() -> None:  # needs no server
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", Cipher(STORE_KEY), timeout=1)
    started = time.monotonic()
    with pytest.raises(StoreOpenError) as caught:
        await store.open()
    assert time.monotonic() - started < 5
    assert "cannot open PostgreSQL store" in str(caught.value)
    with pytest.raises(StoreUnavailable):
        await store.ping()
    await store.close()


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres:pa/ss-w0rd@db.invalid:5432/test",
        "postgresql://postgres:pa#ss-w0rd@db.invalid:5432/test",
        "postgresql://postgres:pass-w0rd@[::1/test",
        "postgresql://postgres:pass-w0rd@127.0.0.1:99999/test",
    ],
)
async def test_postgres_malformed_url_fails_open_without_quoting_it(dsn: str) -> None:
    store = PostgresStore(dsn, Cipher(STORE_KEY), timeout=1)
    with pytest.raises(StoreOpenError, match="not a valid PostgreSQL URL") as caught:
        await store.open()
    for fragment in ("pa", "ss-w0rd", "w0rd"):
        assert fragment not in str(caught.value).replace("PostgreSQL", "").replace("password", "")
    await store.close()


@pytest.mark.postgres
async def test_postgres_two_replicas_claiming_one_key_share_one_row(
    postgres_backend: PostgresBackend,
) -> None:
    async with (
        opened(postgres_backend.new_store()) as one,
        opened(postgres_backend.new_store()) as two,
    ):
        results = await asyncio.gather(
            *(
                (one if i % 2 else two).claim(KEY_A, f"user-{i}@anon.example.com", f"pw-{i}")
                for i in range(40)
            )
        )
        assert len({result.email for result in results}) == 1
        assert len(set(results)) == 1
        assert await one.count() == 1
        assert await two.get(KEY_A) == results[0]
    rows = await postgres_backend.fetch("SELECT user_key FROM anonymous_users")
    assert rows == [(KEY_A,)]


@pytest.mark.postgres
async def test_postgres_replicas_migrating_together_both_succeed(
    postgres_backend: PostgresBackend,
) -> None:
    stores = [postgres_backend.new_store() for _ in range(2)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        assert await postgres_backend.meta("schema_version") == b"1"
        (key_checks,) = await postgres_backend.fetch(
            "SELECT count(*) FROM gini_proxy_meta WHERE name = 'key_check'"
        )
        assert key_checks == (1,)
        first = await stores[0].claim(KEY_A, EMAIL_1, PASSWORD_1)
        assert await stores[1].claim(KEY_A, EMAIL_2, PASSWORD_2) == first
    finally:
        for store in stores:
            await store.close()


@pytest.mark.postgres
async def test_postgres_search_path_isolates_tests(postgres_backend: PostgresBackend) -> None:
    async with opened(postgres_backend.new_store()):
        rows = await postgres_backend.fetch(
            "SELECT table_schema FROM information_schema.tables"
            " WHERE table_name = 'anonymous_users' AND table_schema = current_schema()"
        )
    assert len(rows) == 1
    assert str(rows[0][0]).startswith("gp_test_")


# --- the cipher -----------------------------------------------------------------------------


def test_cipher_round_trip() -> None:
    cipher = Cipher(STORE_KEY)
    sealed = cipher.seal(b"secret", b"context")
    assert cipher.open(sealed, b"context") == b"secret"
    assert cipher.open(cipher.seal(b"", b"context"), b"context") == b""


def test_cipher_uses_a_random_nonce() -> None:
    cipher = Cipher(STORE_KEY)
    sealed = {cipher.seal(b"secret", b"context") for _ in range(20)}
    assert len(sealed) == 20
    assert len({value[1 : 1 + NONCE_BYTES] for value in sealed}) == 20


def test_cipher_binds_the_associated_data() -> None:
    cipher = Cipher(STORE_KEY)
    sealed = cipher.seal(b"secret", b"context")
    with pytest.raises(WrongKey):
        cipher.open(sealed, b"another context")


def test_cipher_password_context_binds_key_and_email() -> None:
    cipher = Cipher(STORE_KEY)
    sealed = cipher.seal_password(KEY_A, EMAIL_1, PASSWORD_1)
    assert cipher.open_password(KEY_A, EMAIL_1, sealed) == PASSWORD_1
    for key, email in ((KEY_B, EMAIL_1), (KEY_A, EMAIL_2)):
        with pytest.raises(StoreUnavailable):
            cipher.open_password(key, email, sealed)


def test_cipher_rejects_another_key() -> None:
    sealed = Cipher(STORE_KEY).seal(b"secret", b"context")
    with pytest.raises(WrongKey):
        Cipher(OTHER_STORE_KEY).open(sealed, b"context")


def test_cipher_sealed_values_start_with_the_version_byte() -> None:
    cipher = Cipher(STORE_KEY)
    sealed = cipher.seal(b"secret", b"context")
    assert VERSION == b"\x01"
    assert sealed[:1] == VERSION
    assert len(sealed) == 1 + NONCE_BYTES + len(b"secret") + TAG_BYTES
    with pytest.raises(WrongKey, match="version"):
        cipher.open(b"\x02" + sealed[1:], b"context")


@pytest.mark.parametrize("length", [0, 1, 5, 8, 13, 1 + NONCE_BYTES + TAG_BYTES - 1])
def test_cipher_truncated_values_raise_wrong_key(length: int) -> None:
    cipher = Cipher(STORE_KEY)
    sealed = cipher.seal(b"secret", b"context")
    with pytest.raises(WrongKey):
        cipher.open(sealed[:length], b"context")


def test_cipher_key_check() -> None:
    check = Cipher(STORE_KEY).check_value()
    Cipher(STORE_KEY).verify(check)
    with pytest.raises(WrongKey, match="encryption_key"):
        Cipher(OTHER_STORE_KEY).verify(check)
    with pytest.raises(WrongKey, match="encryption_key"):
        Cipher(STORE_KEY).verify(Cipher(STORE_KEY).seal(b"something else", b"key-check"))


@pytest.mark.parametrize("length", [0, 16, 24, 31, 33, 64])
def test_cipher_needs_a_32_byte_key(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Cipher(b"k" * length)


def test_postgres_password_comes_from_its_own_secret_field() -> None:
    """`store.password` is handed to the driver instead of living in the URL."""
    key = Secret(base64.b64encode(b"k" * 32).decode())
    store = make_store(StoreConfig("postgresql://proxy@db.internal/gini", key, Secret("db-pw-123")))
    assert isinstance(store, PostgresStore)
    assert store.password == "db-pw-123"
    assert "db-pw-123" not in repr(StoreConfig("postgresql://x@y/z", key, Secret("db-pw-123")))


# --- the encryption keyring (store.previous_encryption_keys, rotate-store-key) ------------


async def _fill(store: CredentialStore, count: int) -> dict[str, str]:
    """`count` stored users; returns key -> password."""
    users = {f"{n:064x}": f"password-{n}" for n in range(count)}
    for n, (key, password) in enumerate(users.items()):
        await store.claim(key, f"user-{n}@anon.example.com", password)
    return users


async def test_a_previous_key_still_decrypts_and_the_read_reseals_the_row(
    backend: Backend, store: CredentialStore
) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    await store.activate(KEY_A, EMAIL_1)
    await store.close()
    before = await backend.raw_row(KEY_A)

    async with opened(backend.keyring_store(OTHER_STORE_KEY, STORE_KEY)) as rotated:
        assert await rotated.get(KEY_A) == StoredUser(KEY_A, EMAIL_1, PASSWORD_1, "active")

    after = await backend.raw_row(KEY_A)
    assert before is not None
    assert after is not None
    assert after[0] == before[0]
    assert after[2] == "active"
    assert after[1] != before[1]
    cipher = Cipher(OTHER_STORE_KEY)
    assert cipher.try_password(KEY_A, EMAIL_1, after[1]) == (PASSWORD_1, False)
    with pytest.raises(WrongKey):
        Cipher(STORE_KEY).try_password(KEY_A, EMAIL_1, after[1])


async def test_a_store_opens_when_only_a_previous_key_matches_its_key_check(
    backend: Backend, store: CredentialStore
) -> None:
    await store.close()
    async with opened(backend.keyring_store(OTHER_STORE_KEY, THIRD_STORE_KEY, STORE_KEY)):
        pass
    # A plain open does not move the key check: only rotate-store-key does, once every row is
    # current, so dropping the old key before rotating still fails at startup.
    assert Cipher(STORE_KEY).verify(await backend.meta("key_check") or b"") is False
    refused = backend.new_store(OTHER_STORE_KEY)
    with pytest.raises(StoreOpenError, match="previous_encryption_keys"):
        await refused.open()
    await refused.close()


async def test_keys_that_decrypt_nothing_are_refused_at_open(
    backend: Backend, store: CredentialStore
) -> None:
    await store.close()
    refused = backend.keyring_store(OTHER_STORE_KEY, THIRD_STORE_KEY)
    with pytest.raises(StoreOpenError, match="encryption_key"):
        await refused.open()
    await refused.close()


async def test_rotate_reencrypts_every_row_in_batches_and_moves_the_key_check(
    backend: Backend, store: CredentialStore
) -> None:
    users = await _fill(store, 7)
    await store.close()

    async with opened(backend.keyring_store(OTHER_STORE_KEY, STORE_KEY)) as rotated:
        await rotated.get(f"{2:064x}")  # re-sealed lazily: counted as already current
        report = await rotate(rotated, batch_size=3)
        assert (report.reencrypted, report.already_current, report.undecryptable) == (6, 1, 0)
        assert report.key_check_moved
        again = await rotate(rotated, batch_size=3)
        assert (again.reencrypted, again.already_current, again.key_check_moved) == (0, 7, False)

    async with opened(backend.new_store(OTHER_STORE_KEY)) as new_key_only:
        assert await new_key_only.count() == 7
        for key, password in users.items():
            stored = await new_key_only.get(key)
            assert stored is not None
            assert stored.password == password
    old_key_only = backend.new_store(STORE_KEY)
    with pytest.raises(StoreOpenError):
        await old_key_only.open()
    await old_key_only.close()


async def test_rotate_counts_rows_no_key_decrypts_and_leaves_them_alone(
    backend: Backend, store: CredentialStore
) -> None:
    await _fill(store, 3)
    lost = Cipher(THIRD_STORE_KEY).seal_password(KEY_B, EMAIL_2, PASSWORD_2)
    await store.claim(KEY_B, EMAIL_2, PASSWORD_2)
    p = backend.param
    await backend.execute(
        f"UPDATE anonymous_users SET password = {p(1)} WHERE user_key = {p(2)}", lost, KEY_B
    )
    await store.close()

    async with opened(backend.keyring_store(OTHER_STORE_KEY, STORE_KEY)) as rotated:
        report = await rotate(rotated)
        assert (report.reencrypted, report.already_current, report.undecryptable) == (3, 0, 1)
        assert not report.key_check_moved  # the old key is still needed to start
        assert await rotated.count() == 4
    row = await backend.raw_row(KEY_B)
    assert row is not None
    assert row[1] == lost
    Cipher(STORE_KEY).verify(await backend.meta("key_check") or b"")


async def test_reseal_is_a_compare_and_swap(backend: Backend, store: CredentialStore) -> None:
    await store.claim(KEY_A, EMAIL_1, PASSWORD_1)
    row = await store.sealed_row(KEY_A)
    assert row is not None
    assert row.sealed == (await backend.raw_row(KEY_A) or ("", b"", ""))[1]
    assert await store.sealed_row(KEY_B) is None
    fresh = store.cipher.seal_password(KEY_A, EMAIL_1, PASSWORD_1)

    assert not await store.reseal(KEY_A, EMAIL_1, b"\x01not-the-stored-value", fresh)
    assert not await store.reseal(KEY_A, EMAIL_2, row.sealed, fresh)
    assert (await backend.raw_row(KEY_A) or ("", b"", ""))[1] == row.sealed
    assert await store.reseal(KEY_A, EMAIL_1, row.sealed, fresh)
    assert (await backend.raw_row(KEY_A) or ("", b"", ""))[1] == fresh
    assert not await store.reseal(KEY_A, EMAIL_1, row.sealed, fresh)  # already swapped


async def test_reseal_many_swaps_only_rows_that_still_hold_what_was_read(
    backend: Backend, store: CredentialStore
) -> None:
    users = await _fill(store, 4)
    rows = await store.sealed_rows("", 10)
    keys = sorted(users)
    await store.delete(keys[1])  # deleted after it was read
    await store.replace(keys[2], "user-2@anon.example.com", EMAIL_2, PASSWORD_2)  # replaced
    swaps = [(row, store.cipher.seal_password(row.key, row.email, users[row.key])) for row in rows]

    assert await store.reseal_many(swaps) == {keys[0], keys[3]}
    assert await store.reseal_many([]) == set()
    assert await store.reseal_many(swaps) == set()  # already swapped: nothing matches any more
    assert await store.get(keys[2]) == StoredUser(keys[2], EMAIL_2, PASSWORD_2, "pending")
    assert await store.get(keys[1]) is None
    for n in (0, 3):
        assert (await backend.raw_row(keys[n]) or ("", b"", ""))[1] == swaps[n][1]


async def test_sqlite_without_returning_reseals_row_by_row(
    sqlite_backend: SqliteBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with opened(sqlite_backend.new_store()) as old:
        users = await _fill(old, 5)
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))  # before RETURNING
    async with opened(sqlite_backend.keyring_store(OTHER_STORE_KEY, STORE_KEY)) as rotated:
        report = await rotate(rotated, batch_size=2)
        assert (report.reencrypted, report.already_current) == (5, 0)
    async with opened(sqlite_backend.new_store(OTHER_STORE_KEY)) as new_key_only:
        for key, password in users.items():
            assert (
                await new_key_only.get(key) or StoredUser("", "", "", "active")
            ).password == password


async def test_sealed_rows_pages_in_key_order(store: CredentialStore) -> None:
    users = await _fill(store, 5)
    first = await store.sealed_rows("", 2)
    rest = await store.sealed_rows(first[-1].key, 10)
    assert [row.key for row in first + rest] == sorted(users)
    assert await store.sealed_rows(rest[-1].key, 10) == []
    assert PASSWORD_1 not in repr(first)


async def test_setdefault_meta_keeps_the_first_value(store: CredentialStore) -> None:
    assert await store.get_meta("identity_key_id") is None
    assert await store.setdefault_meta("identity_key_id", b"first") == b"first"
    assert await store.setdefault_meta("identity_key_id", b"second") == b"first"
    assert await store.get_meta("identity_key_id") == b"first"
    assert not await store.replace_meta("identity_key_id", b"second", b"third")
    assert await store.replace_meta("identity_key_id", b"first", b"third")
    assert await store.get_meta("identity_key_id") == b"third"


async def test_rotation_racing_replicas_loses_and_duplicates_nothing(backend: Backend) -> None:
    """Two rotations and a serving replica (reads, replaces, deletes, claims) at once."""
    async with opened(backend.new_store(STORE_KEY)) as old:
        users = await _fill(old, 40)
    async with (
        opened(backend.keyring_store(OTHER_STORE_KEY, STORE_KEY)) as one,
        opened(backend.keyring_store(OTHER_STORE_KEY, STORE_KEY)) as two,
        opened(backend.keyring_store(OTHER_STORE_KEY, STORE_KEY)) as serving,
    ):

        async def serve() -> None:
            for n, key in enumerate(list(users)):
                if n % 4 == 0:
                    fresh = f"replaced-{n}"
                    await serving.replace(key, f"user-{n}@anon.example.com", f"r{n}@x.test", fresh)
                    users[key] = fresh
                elif n % 4 == 1:
                    assert (await serving.get(key) or StoredUser("", "", "", "active")).password
                elif n % 4 == 2 and n < 12:
                    await serving.delete(key)
                    del users[key]
                await serving.claim(f"{n + 1000:064x}", f"new-{n}@x.test", f"new-{n}")
                users[f"{n + 1000:064x}"] = f"new-{n}"
                await asyncio.sleep(0)

        reports = await asyncio.gather(
            rotate(one, batch_size=4), rotate(two, batch_size=5), serve()
        )
        assert all(report.undecryptable == 0 for report in reports[:2])
        await rotate(one)  # rows claimed behind the first pass are current already

    async with opened(backend.new_store(OTHER_STORE_KEY)) as new_key_only:
        assert await new_key_only.count() == len(users)
        for key, password in users.items():
            stored = await new_key_only.get(key)
            assert stored is not None, key
            assert stored.password == password


def test_cipher_keyring_opens_with_previous_keys_and_says_so() -> None:
    old = Cipher(STORE_KEY).seal(b"secret", b"context")
    keyring = Cipher(OTHER_STORE_KEY, [THIRD_STORE_KEY, STORE_KEY])
    assert keyring.unseal(old, b"context") == (b"secret", True)
    assert keyring.unseal(keyring.seal(b"secret", b"context"), b"context") == (b"secret", False)
    with pytest.raises(WrongKey):
        Cipher(STORE_KEY).open(keyring.seal(b"secret", b"context"), b"context")
    assert keyring.verify(Cipher(STORE_KEY).check_value()) is True
    assert keyring.verify(keyring.check_value()) is False
    with pytest.raises(ValueError, match="32 bytes"):
        Cipher(STORE_KEY, [b"short"])


@pytest.mark.postgres
async def test_postgres_replicas_recording_meta_together_agree(
    postgres_backend: PostgresBackend,
) -> None:
    stores = [postgres_backend.new_store() for _ in range(6)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        results = await asyncio.gather(
            *(
                store.setdefault_meta("identity_key_id", f"{n}".encode())
                for n, store in enumerate(stores)
            )
        )
        assert len(set(results)) == 1
    finally:
        for store in stores:
            await store.close()
