"""Moving stored credentials to the current encryption key, lazily and all at once.

A row sealed under one of `store.previous_encryption_keys` is re-sealed with
`store.encryption_key` when it is read, and `rotate-store-key` walks every row. Each row is
swapped by compare-and-swap on its exact old ciphertext and email, so a row that a replica
changed meanwhile (new credentials, deleted, already re-sealed) is never overwritten: it is
read again instead. No row is ever created or deleted here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import StoreUnavailable
from .base import CredentialStore, SealedRow
from .cipher import WrongKey

log = logging.getLogger("proxy.store")

BATCH_SIZE = 500
MAX_ATTEMPTS = 5  # a row changing this often under one rotation is a bug, not a race
KEY_CHECK = "key_check"


async def open_sealed(store: CredentialStore, key: str, email: str, sealed: bytes) -> str:
    """The password of a row just read; re-sealed with the current key if an old key sealed it."""
    password, stale = store.cipher.unseal_password(key, email, sealed)
    if stale:
        fresh = store.cipher.seal_password(key, email, password)
        try:
            await store.reseal(key, email, sealed, fresh)
        except StoreUnavailable:
            # The read itself succeeded; the next read or rotate-store-key tries again.
            log.warning("could not re-encrypt a stored credential with the current key")
    return password


@dataclass
class RotationReport:
    """What `rotate` did: counts only, nothing secret."""

    reencrypted: int = 0
    already_current: int = 0
    undecryptable: int = 0
    key_check_moved: bool = False


async def rotate(store: CredentialStore, batch_size: int = BATCH_SIZE) -> RotationReport:
    """Re-seal every row with the current key; move the key check once every row is current."""
    report = RotationReport()
    after = ""
    while rows := await store.sealed_rows(after, batch_size):
        for row in rows:
            await _rotate_row(store, row, report)
        after = rows[-1].key
    if report.undecryptable == 0:
        report.key_check_moved = await move_key_check(store)
    return report


async def _rotate_row(store: CredentialStore, row: SealedRow, report: RotationReport) -> None:
    current: SealedRow | None = row
    for _ in range(MAX_ATTEMPTS):
        if current is None:
            return  # deleted meanwhile: nothing left to re-encrypt
        try:
            password, stale = store.cipher.try_password(current.key, current.email, current.sealed)
        except WrongKey:
            report.undecryptable += 1  # left untouched: a key may still be found
            return
        if not stale:
            report.already_current += 1
            return
        fresh = store.cipher.seal_password(current.key, current.email, password)
        if await store.reseal(current.key, current.email, current.sealed, fresh):
            report.reencrypted += 1
            return
        current = await store.sealed_row(current.key)  # changed meanwhile: look again
    raise StoreUnavailable("A stored credential kept changing during the key rotation.")


async def move_key_check(store: CredentialStore) -> bool:
    """Re-seal the key check with the current key if a previous key sealed it."""
    check = await store.get_meta(KEY_CHECK)
    if check is None or not store.cipher.verify(check):
        return False
    return await store.replace_meta(KEY_CHECK, check, store.cipher.check_value())
