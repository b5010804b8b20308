"""Encryption at rest for stored passwords: AES-256-GCM with a random nonce per value.

The row key and email are bound in as associated data, so a ciphertext copied into another
row does not decrypt. A fixed check value is sealed at first use; opening the store with
another key fails on it, before any request is served.
"""

from __future__ import annotations

import logging
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import StoreUnavailable

log = logging.getLogger("proxy.store")

NONCE_BYTES = 12
TAG_BYTES = 16
VERSION = b"\x01"  # first byte of every sealed value: room for a future key rotation scheme
KEY_CHECK = b"gini-auth-proxy key check"


class WrongKey(Exception):
    """store.encryption_key cannot decrypt what is stored."""


class Cipher:
    """Seals and opens passwords with one 32-byte key."""

    def __init__(self, key: bytes):
        if len(key) != 32:
            raise ValueError("store.encryption_key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return VERSION + nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        if sealed[:1] != VERSION:
            raise WrongKey("unknown sealed value version")
        if len(sealed) < 1 + NONCE_BYTES + TAG_BYTES:  # AESGCM raises ValueError on short nonces
            raise WrongKey("the sealed value is truncated")
        nonce = sealed[1 : 1 + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[1 + NONCE_BYTES :], context)
        except InvalidTag:
            raise WrongKey("store.encryption_key cannot decrypt the stored value") from None

    def seal_password(self, key: str, email: str, password: str) -> bytes:
        return self.seal(password.encode(), _context(key, email))

    def open_password(self, key: str, email: str, sealed: bytes) -> str:
        try:
            return self.open(sealed, _context(key, email)).decode()
        except WrongKey as exc:
            # A row that does not decrypt is damage or tampering, not an outage; surfaced as
            # 503 so the caller retries and the operator sees it in the logs and metrics.
            reason = {"reason": str(exc)}
            log.error("a stored credential could not be decrypted", extra=reason)  # noqa: TRY400
            raise StoreUnavailable("A stored credential could not be decrypted.") from None

    def check_value(self) -> bytes:
        return self.seal(KEY_CHECK, b"key-check")

    def verify(self, sealed: bytes) -> None:
        """Raise WrongKey unless `sealed` came from `check_value` under this key."""
        try:
            matches = self.open(sealed, b"key-check") == KEY_CHECK
        except WrongKey:
            matches = False
        if not matches:
            raise WrongKey("store.encryption_key is not the key this store was created with")


def _context(key: str, email: str) -> bytes:
    return f"{key}\x00{email}".encode()
