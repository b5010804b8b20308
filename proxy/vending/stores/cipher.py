"""Encryption at rest for stored passwords: AES-256-GCM with a random nonce per value.

The row key and email are bound in as associated data, so a ciphertext copied into another
row does not decrypt. A fixed check value is sealed at first use; opening the store with
another key fails on it, before any request is served.

Keyring: values are always sealed with the current key (`store.encryption_key`); the keys of
`store.previous_encryption_keys` only open. `unseal` tells whether a value needs re-sealing,
which the stores do lazily and `rotate-store-key` does for every row.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from proxy.errors import StoreUnavailable

log = logging.getLogger("proxy.store")

NONCE_BYTES = 12
TAG_BYTES = 16
VERSION = b"\x01"  # first byte of every sealed value: room for a future format
KEY_CHECK = b"gini-auth-proxy key check"


class WrongKey(Exception):
    """store.encryption_key cannot decrypt what is stored."""


class Cipher:
    """Seals passwords with the current 32-byte key; opens them with it or a previous one."""

    def __init__(self, key: bytes, previous: Sequence[bytes] = ()):
        if len(key) != 32 or any(len(old) != 32 for old in previous):
            raise ValueError("store.encryption_key must be 32 bytes")
        self._aead = AESGCM(key)
        self._keyring = (self._aead, *(AESGCM(old) for old in previous))

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return VERSION + nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        return self.unseal(sealed, context)[0]

    def unseal(self, sealed: bytes, context: bytes) -> tuple[bytes, bool]:
        """The plaintext, and whether a previous key sealed it (it should be re-sealed)."""
        if sealed[:1] != VERSION:
            raise WrongKey("unknown sealed value version")
        if len(sealed) < 1 + NONCE_BYTES + TAG_BYTES:  # AESGCM raises ValueError on short nonces
            raise WrongKey("the sealed value is truncated")
        nonce, body = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        for index, aead in enumerate(self._keyring):
            try:
                return aead.decrypt(nonce, body, context), index > 0
            except InvalidTag:
                continue
        raise WrongKey(
            "neither store.encryption_key nor store.previous_encryption_keys decrypts the value"
        )

    def seal_password(self, key: str, email: str, password: str) -> bytes:
        return self.seal(password.encode(), _context(key, email))

    def try_password(self, key: str, email: str, sealed: bytes) -> tuple[str, bool]:
        """Like `unseal_password`, but raises WrongKey quietly (rotate-store-key counts them)."""
        plaintext, stale = self.unseal(sealed, _context(key, email))
        return plaintext.decode(), stale

    def open_password(self, key: str, email: str, sealed: bytes) -> str:
        return self.unseal_password(key, email, sealed)[0]

    def unseal_password(self, key: str, email: str, sealed: bytes) -> tuple[str, bool]:
        """The password and whether it is sealed under a previous key."""
        try:
            return self.try_password(key, email, sealed)
        except WrongKey as exc:
            # A row that does not decrypt is damage or tampering, not an outage; surfaced as
            # 503 so the caller retries and the operator sees it in the logs and metrics.
            reason = {"reason": str(exc)}
            log.error("a stored credential could not be decrypted", extra=reason)  # noqa: TRY400
            raise StoreUnavailable("A stored credential could not be decrypted.") from None

    def check_value(self) -> bytes:
        return self.seal(KEY_CHECK, b"key-check")

    def verify(self, sealed: bytes) -> bool:
        """Raise WrongKey unless `sealed` came from `check_value` under a key of this keyring;
        True when a previous key sealed it (rotate-store-key moves it to the current key)."""
        try:
            plaintext, stale = self.unseal(sealed, b"key-check")
        except WrongKey:
            plaintext, stale = b"", False
        if plaintext != KEY_CHECK:
            raise WrongKey(
                "neither store.encryption_key nor any of store.previous_encryption_keys is the"
                " key this store's data is encrypted with"
            )
        return stale


def _context(key: str, email: str) -> bytes:
    return f"{key}\x00{email}".encode()
