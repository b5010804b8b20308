"""The credential store interface: anonymous users' Gini credentials, keyed by derived identifier.

Rows follow an insert-first protocol that makes "one internal id, one Gini user" hold across
processes without locks: the first writer's credentials win (`claim`), they are stored as
`pending` before the user exists at Gini and marked `active` after; replacing credentials
(the user vanished at Gini) is a compare-and-swap on the old email.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from proxy.errors import StoreUnavailable

if TYPE_CHECKING:
    from proxy.vending.stores.cipher import Cipher

State = Literal["pending", "active"]


class StoreOpenError(Exception):
    """The store cannot be opened (unreachable, bad folder, wrong key): exit code 3."""


class StoreDown(StoreUnavailable):
    """The store answered but cannot do its job: disk full, read-only, an I/O error or a damaged
    file. Unlike a timeout or a dropped connection this is not one unlucky call, so the store
    counts as down at once (`gini_proxy_store_up` 0) until the check can write again."""

    def __init__(self, reason: str):
        super().__init__()
        self.detail = reason  # an error class or code name, never a driver message


@dataclass(frozen=True, slots=True)
class StoreOrigin:
    """Where an opened store comes from, for the startup log and /status."""

    created_fresh: bool  # this open created it: no key check and no user was there before
    created_at: float | None  # when it was created; None for stores made before it was recorded


@dataclass(frozen=True, slots=True)
class StoredUser:
    """One anonymous user's credentials as stored (password decrypted)."""

    key: str  # the derived identifier: the store never sees a raw user id
    email: str
    password: str = field(repr=False)
    state: State


@dataclass(frozen=True, slots=True)
class SealedRow:
    """One row as stored, password still sealed (key rotation works on these)."""

    key: str
    email: str
    sealed: bytes = field(repr=False)


class CredentialStore(Protocol):
    """Implemented by `SqliteStore` and `PostgresStore`; one contract test suite runs on both."""

    cipher: Cipher

    @property
    def origin(self) -> StoreOrigin | None:
        """Set by `open()`: whether it created the store, and when the store was created."""

    async def open(self) -> None:
        """Connect, create or migrate the schema, and check the encryption key against it."""

    async def close(self) -> None:
        """Release connections; safe to call twice."""

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store accepts a write now: a heartbeat row is
        updated, because a full disk or a read-only database still answers reads."""

    def use_password(self, password: str) -> None:
        """A reloaded `store.password`, for every new connection (SQLite has none)."""

    async def get(self, key: str) -> StoredUser | None:
        """The stored user for `key`, if any."""

    async def claim(self, key: str, email: str, password: str) -> StoredUser:
        """Store these credentials as pending unless a row exists; return the row that won."""

    async def replace(self, key: str, old_email: str, email: str, password: str) -> StoredUser:
        """Swap in new pending credentials if the row still holds `old_email`; return the row."""

    async def activate(self, key: str, email: str) -> None:
        """Mark the row active if it still holds `email` (the user now exists at Gini)."""

    async def delete(self, key: str) -> bool:
        """Forget the row; False if there was none."""

    async def count(self) -> int:
        """How many users are stored (for /status)."""

    # Metadata rows (`gini_proxy_meta`) beside the schema version and key check.

    async def get_meta(self, name: str) -> bytes | None:
        """The metadata value `name`, if any."""

    async def setdefault_meta(self, name: str, value: bytes) -> bytes:
        """Insert `value` unless `name` has one; return the stored value (the first wins)."""

    async def replace_meta(self, name: str, old: bytes, new: bytes) -> bool:
        """Set `name` to `new` if it still holds `old` (compare-and-swap)."""

    # Key rotation: rows re-sealed one by one, each by compare-and-swap.

    async def sealed_rows(self, after: str, limit: int) -> list[SealedRow]:
        """Up to `limit` rows whose key sorts after `after`, in key order."""

    async def sealed_row(self, key: str) -> SealedRow | None:
        """One row as stored."""

    async def reseal(self, key: str, email: str, old: bytes, new: bytes) -> bool:
        """Swap in `new` if the row still holds `email` and exactly `old`."""

    async def reseal_many(self, swaps: Sequence[tuple[SealedRow, bytes]]) -> set[str]:
        """`reseal` for each (row as read, new sealed value) in one statement; the keys swapped."""


def parse_state(value: object) -> State:
    """A state column read back from a backend."""
    return "active" if value == "active" else "pending"


async def require_user(store: CredentialStore, key: str) -> StoredUser:
    """The row just written for `key`; it can only be gone if a concurrent DELETE won."""
    user = await store.get(key)
    if user is None:
        raise StoreUnavailable("The stored user changed concurrently; try again.")
    return user
