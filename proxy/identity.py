"""Caller identity: validating the internal user id and deriving Gini's `X-User-Identifier`.

The identifier is the lowercase hex HMAC-SHA256 of the UTF-8 id under a secret key. A plain
hash would let anyone who knows (or guesses) internal ids compute Gini identifiers, which
Gini's own guidelines warn against. Pure code: no aiohttp here.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from multidict import MultiMapping

from proxy.config.memo import Memo
from proxy.errors import InvalidUser, MissingUser

MAX_USER_ID_BYTES = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def validate_user_id(raw: str | None) -> str:
    """Return the id if it is acceptable; raise MissingUser or InvalidUser otherwise.

    aiohttp decodes header bytes as UTF-8 with surrogate escapes, so bytes that are not UTF-8
    show up as lone surrogates and fail the encode below.
    """
    if raw is None:
        raise MissingUser
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidUser from None
    if size == 0 or size > MAX_USER_ID_BYTES or _CONTROL.search(raw) or raw.strip() != raw:
        raise InvalidUser
    return raw


AMBIGUOUS = "The request carries more than one user id header; the identity is ambiguous."


def user_id_from(headers: MultiMapping[str], name: str) -> str:
    """The one user id in `headers` under `name` (matched case-insensitively), as sent:
    `IdentifierDeriver` validates it the first time it sees it.

    Two or more such headers, even with equal values, are refused: something in front of the
    caller may append an authenticated id instead of replacing it, and then neither copy can
    be trusted. `getall` costs about what `get` does, so the check is free on the hot path.
    """
    values = headers.getall(name, None)
    if values is None:
        raise MissingUser
    if len(values) > 1:
        raise InvalidUser(AMBIGUOUS)
    return values[0]


class IdentifierDeriver:
    """Maps internal user ids to `X-User-Identifier` values, remembering recent ones.

    A miss only costs one validation and one HMAC. Only valid ids are remembered, so a hit
    skips the validation too (with the log scope taking the header values as they come:
    -6.7k instructions per flow-1 request, 1.1 %, callgrind).
    """

    __slots__ = ("_key", "_memo")

    def __init__(self, key: bytes, max_entries: int | None = None):
        self._key = key
        self._memo: Memo[str, str] = Memo("user_identifiers", max_entries)

    def __call__(self, user_id: str) -> str:
        """The identifier for a user id as sent; InvalidUser if it is not acceptable."""
        found = self._memo.entries.get(user_id)
        if found is None:
            found = self._memo.remember(
                user_id, derive_identifier(self._key, validate_user_id(user_id))
            )
        return found

    def __len__(self) -> int:
        return len(self._memo)


class CallerIdentity:
    """Who a request acts for, read the same way by every endpoint: the configured identity
    header (`user_id_from`), validated and mapped to Gini's identifier by `deriver`."""

    __slots__ = ("deriver", "header")

    def __init__(self, header: str, deriver: IdentifierDeriver):
        self.header = header
        self.deriver = deriver

    def identifier(self, headers: MultiMapping[str]) -> str:
        """The `X-User-Identifier` for the one valid user id in `headers`, else MissingUser or
        InvalidUser."""
        return self.deriver(user_id_from(headers, self.header))

    def values(self, headers: MultiMapping[str]) -> tuple[str, ...]:
        """Every copy of the identity header as sent, valid or not: what the log scope hides."""
        return tuple(headers.getall(self.header, ()))


def derive_identifier(key: bytes, user_id: str) -> str:
    """Lowercase hex HMAC-SHA256 of the UTF-8 user id (the contract's default scheme)."""
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()


KEY_ID_LABEL = b"gini-auth-proxy\x00identity-key-id\x00v1"
"""What `identity_key_id` signs. The NUL bytes keep it apart from every valid user id (control
characters are refused), so no caller's X-User-Identifier can ever equal or reveal a key id."""
KEY_ID_HEX_CHARS = 16  # 64 bits: collisions between two real keys are out of reach


def identity_key_id(key: bytes) -> str:
    """A fingerprint of `identity.hmac_key` that can be shown and compared, never reversed."""
    return hmac.new(key, KEY_ID_LABEL, hashlib.sha256).hexdigest()[:KEY_ID_HEX_CHARS]
