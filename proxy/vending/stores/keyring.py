"""Moving stored credentials to the current encryption key, lazily and all at once.

A row sealed under one of `store.previous_encryption_keys` is re-sealed with
`store.encryption_key` when it is read, and `rotate-store-key` walks every row. Each row is
swapped by compare-and-swap on its exact old ciphertext and email, so a row that a replica
changed meanwhile (new credentials, deleted, already re-sealed) is never overwritten: it is
read again instead. `rotate` swaps a whole batch in one statement (one transaction), each row
still under its own compare-and-swap condition. No row is ever created or deleted here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from proxy.errors import StoreUnavailable
from proxy.vending.stores.base import CredentialStore, SealedRow
from proxy.vending.stores.cipher import WrongKey

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
        await _rotate_batch(store, rows, report)
        after = rows[-1].key
    if report.undecryptable == 0:
        report.key_check_moved = await move_key_check(store)
    return report


async def _rotate_batch(
    store: CredentialStore, rows: list[SealedRow], report: RotationReport
) -> None:
    """Swap a batch in one statement; rows that changed meanwhile are read again and retried."""
    for _ in range(MAX_ATTEMPTS):
        swaps = _swaps(store, rows, report)
        if not swaps:
            return
        done = await store.reseal_many(swaps)
        report.reencrypted += len(done)
        missed = [row.key for row, _ in swaps if row.key not in done]
        # A row deleted meanwhile is gone for good: nothing left to re-encrypt.
        rows = [row for key in missed if (row := await store.sealed_row(key)) is not None]
    if _swaps(store, rows, report):  # rows read back last may have become current
        raise StoreUnavailable("Stored credentials kept changing during the key rotation.")


def _swaps(
    store: CredentialStore, rows: list[SealedRow], report: RotationReport
) -> list[tuple[SealedRow, bytes]]:
    """The rows a previous key sealed, each with its value re-sealed under the current key."""
    swaps = []
    for row in rows:
        try:
            password, stale = store.cipher.try_password(row.key, row.email, row.sealed)
        except WrongKey:
            report.undecryptable += 1  # left untouched: its key may still be found
            continue
        if stale:
            swaps.append((row, store.cipher.seal_password(row.key, row.email, password)))
        else:
            report.already_current += 1
    return swaps


async def move_key_check(store: CredentialStore) -> bool:
    """Re-seal the key check with the current key if a previous key sealed it."""
    check = await store.get_meta(KEY_CHECK)
    if check is None or not store.cipher.verify(check):
        return False
    return await store.replace_meta(KEY_CHECK, check, store.cipher.check_value())
