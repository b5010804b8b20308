"""The identity key guard: refuse to start with an `identity.hmac_key` other than the recorded one.

Every X-User-Identifier is derived from that key, so a changed key silently turns every
internal user into a new, empty Gini user. The store records the key's fingerprint on first
start (insert-if-absent, so replicas starting together agree) and every later start compares;
without a store, `identity.key_id` in the config pins it.
"""

from __future__ import annotations

from proxy.config import Config
from proxy.errors import StoreUnavailable
from proxy.identity import identity_key_id
from proxy.vending.stores import CredentialStore, StoreOpenError

META_NAME = "identity_key_id"


class IdentityKeyChanged(Exception):
    """`identity.hmac_key` is not the key this deployment's users were derived with: exit 3."""


def _refusal(expected: str, actual: str, where: str) -> IdentityKeyChanged:
    return IdentityKeyChanged(
        f"identity.hmac_key has key id {actual}, but {where} holds key id {expected}. "
        "Refusing to start: with a different key every internal user id would map to a new, "
        "empty Gini user, and the documents of every existing user would be unreachable. "
        "Restore the previous identity.hmac_key (see docs/security.md, identity key guard)."
    )


def check_pin(config: Config) -> str:
    """The key id of the configured key; raises if `identity.key_id` pins another one."""
    actual = identity_key_id(config.identity.hmac_key.encode())
    pinned = config.identity.key_id
    if pinned is not None and pinned != actual:
        raise _refusal(pinned, actual, "identity.key_id in the config")
    return actual


async def check_store(store: CredentialStore, key_id: str) -> None:
    """Record `key_id` in an opened store unless one is recorded; refuse if it differs."""
    try:
        stored = await store.setdefault_meta(META_NAME, key_id.encode())
    except StoreUnavailable:
        raise StoreOpenError("cannot record the identity key id in the store") from None
    recorded = stored.decode(errors="replace")
    if recorded != key_id:
        raise _refusal(recorded, key_id, "the credential store")
