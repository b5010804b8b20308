"""Durable credential stores for anonymous users, chosen by `store.url`."""

from __future__ import annotations

from pathlib import Path

from proxy.config import StoreConfig
from proxy.vending.stores.base import CredentialStore, StoredUser, StoreOpenError

__all__ = ["CredentialStore", "StoreOpenError", "StoredUser", "make_store"]


def make_store(config: StoreConfig) -> CredentialStore:
    """The backend for `store.url`: `sqlite:///PATH` (4 slashes: absolute) or `postgresql://`."""
    # Imported here: a sidecar without flow 4 never loads a database driver or cryptography.
    from proxy.vending.stores.cipher import Cipher  # noqa: PLC0415

    cipher = Cipher(config.key_bytes, config.previous_key_bytes)
    if config.url.startswith("sqlite:///"):
        from proxy.vending.stores.sqlite import SqliteStore  # noqa: PLC0415

        return SqliteStore(Path(config.url[len("sqlite:///") :]), cipher)
    from proxy.vending.stores.postgres import PostgresStore  # noqa: PLC0415

    password = config.password.value if config.password is not None else None
    return PostgresStore(config.url, cipher, password=password)
