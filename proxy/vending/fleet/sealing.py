"""What the fleet writes to Redis, and how it stays unreadable there (pure).

- Key names carry an HMAC of the flow and cache key under a key derived from
  `identity.hmac_key` for this purpose only: never a user id, identifier or token.
- Values are AES-GCM sealed under a second derived key, with the key name as associated data,
  so an entry copied to another key name fails to open. A value that fails to open is a miss.
- A stored value is `<fence>:<sealed>`: the fencing number in the clear (a counter, nothing
  about any user) so a Lua script can refuse to overwrite a newer entry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NAME_LABEL = b"gini-auth-proxy fleet key names v1"
VALUE_LABEL = b"gini-auth-proxy fleet values v1"
NONCE_BYTES = 12


def derive(hmac_key: bytes, label: bytes) -> bytes:
    """A 256-bit key for one purpose: HMAC-SHA256 of the label under the identity key."""
    return hmac.new(hmac_key, label, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Names:
    """The Redis key names of one cached token: its value and its fetch lock.

    Both carry the same hash tag (`{...}`), so in a Redis Cluster they live in one slot and a
    script may touch both."""

    value: str
    lock: str


@dataclass(frozen=True, slots=True)
class Entry:
    """A shared token: the access token and its expiry in wall-clock seconds."""

    access_token: str
    expires_at_wall: float

    def __repr__(self) -> str:
        return f"Entry(expires_at_wall={self.expires_at_wall:.0f})"  # never the token


class Sealer:
    """Key names and sealed values for one identity key and key prefix."""

    def __init__(self, hmac_key: bytes, prefix: str):
        self._names = derive(hmac_key, NAME_LABEL)
        self._aead = AESGCM(derive(hmac_key, VALUE_LABEL))
        self.prefix = prefix

    def names(self, flow: str, key: str) -> Names:
        digest = hmac.new(self._names, f"{flow}\0{key}".encode(), hashlib.sha256).hexdigest()
        tag = f"{self.prefix}{{{digest[:32]}}}"
        return Names(value=f"{tag}:token", lock=f"{tag}:lock")

    def seal(self, name: str, entry: Entry, fence: int) -> bytes:
        plain = json.dumps({"t": entry.access_token, "e": entry.expires_at_wall}).encode()
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, plain, name.encode())
        return b"%d:" % fence + sealed

    def open(self, name: str, stored: bytes | None) -> Entry | None:
        """The entry in `stored`, or None for anything absent, foreign, altered or malformed."""
        if stored is None:
            return None
        _, sep, sealed = stored.partition(b":")
        if not sep or len(sealed) <= NONCE_BYTES:
            return None
        try:
            plain = self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], name.encode())
            data = json.loads(plain)
        except (InvalidTag, ValueError):
            return None
        token, expires = data.get("t") if isinstance(data, dict) else None, None
        if isinstance(data, dict):
            expires = data.get("e")
        if not isinstance(token, str) or not isinstance(expires, int | float):
            return None
        return Entry(token, float(expires))


def fence_of(stored: bytes | None) -> int | None:
    """The fencing number a stored value was written under (None if absent or malformed)."""
    if stored is None:
        return None
    head, sep, _ = stored.partition(b":")
    return int(head) if sep and head.isdigit() else None
