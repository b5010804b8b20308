"""Durable credential stores for anonymous users, chosen by `store.url`."""

from __future__ import annotations

from pathlib import Path

from ..config import StoreConfig
from .base import CredentialStore, StoredUser, StoreOpenError
from .cipher import Cipher
from .postgres import PostgresStore
from .sqlite import SqliteStore

__all__ = ["CredentialStore", "StoreOpenError", "StoredUser", "make_store"]


def make_store(config: StoreConfig) -> CredentialStore:
    """The backend for `store.url`: `sqlite:///PATH` (4 slashes: absolute) or `postgresql://`."""
    cipher = Cipher(config.key_bytes)
    if config.url.startswith("sqlite:///"):
        return SqliteStore(Path(config.url[len("sqlite:///") :]), cipher)
    return PostgresStore(config.url, cipher)
