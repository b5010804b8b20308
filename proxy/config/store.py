"""`store`: where anonymous users' Gini credentials are kept, and the keys that encrypt them."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from proxy.config.reader import Reader
from proxy.config.secret import Secret


@dataclass(frozen=True, slots=True)
class StoreConfig:
    url: str = field(repr=False)  # a PostgreSQL URL may carry a password
    encryption_key: Secret
    password: Secret | None = None  # PostgreSQL password from a secret source, not the URL
    previous_encryption_keys: tuple[Secret, ...] = ()  # still decrypt; never encrypt

    @property
    def key_bytes(self) -> bytes:
        """The 32-byte AES key (validated at load time)."""
        return decode_key(self.encryption_key.value) or b""

    @property
    def previous_key_bytes(self) -> tuple[bytes, ...]:
        """The 32-byte keys that only decrypt, in configured order (validated at load time)."""
        return tuple(decode_key(key.value) or b"" for key in self.previous_encryption_keys)


def decode_key(text: str) -> bytes | None:
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def url_password(url: str) -> str | None:
    """The password of a URL ("" if it has none), or None if the URL cannot be parsed."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        return None
    return unquote(parts.password or "")


def parse_store(r: Reader, data: Mapping[str, Any]) -> StoreConfig | None:
    d = r.section(
        data, "store", "store", ("url", "encryption_key", "password", "previous_encryption_keys")
    )
    if d is None:
        return None
    url = r.string(d, "url", "store.url")
    if url and not (
        url.startswith("sqlite:///") or url.split("://")[0] in ("postgresql", "postgres")
    ):
        r.problem("store.url", "must start with sqlite:/// or postgresql://")
    elif url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        # Three slashes name a path relative to the working directory: in a container that
        # file is gone on restart, and every anonymous user silently becomes a new Gini user.
        r.problem(
            "store.url",
            f"{url!r} is a relative path; use four slashes and an absolute path, e.g. "
            f"sqlite:////var/lib/gini-auth-proxy/store.db",
        )
    elif url.startswith("postgres") and url_password(url) is None and "@" in url:
        # The URL may hold a password: describe the problem without quoting any of it.
        r.problem("store.url", "is not a valid URL (percent-encode special characters)")
    key = r.secret(d, "encryption_key", "store.encryption_key")
    if key.source != "invalid" and decode_key(key.value) is None:
        r.problem(
            "store.encryption_key",
            f"must be 32 random bytes in base64 (e.g. `openssl rand -base64 32`); the value from "
            f"{key.source} is not",
        )
    password = None
    if d.get("password") is not None:
        password = r.secret(d, "password", "store.password")
        if url.startswith("sqlite:"):
            r.problem("store.password", "only applies to a PostgreSQL store")
    return StoreConfig(
        url=url,
        encryption_key=key,
        password=password,
        previous_encryption_keys=_previous_keys(r, d, key),
    )


def _previous_keys(r: Reader, d: Mapping[str, Any], current: Secret) -> tuple[Secret, ...]:
    """`store.previous_encryption_keys`: secret sources validated like `encryption_key`."""
    specs = d.get("previous_encryption_keys")
    if specs is None:
        return ()
    if not isinstance(specs, list):
        r.problem("store.previous_encryption_keys", "must be a list of secret sources")
        return ()
    keys: list[Secret] = []
    for index, spec in enumerate(specs):
        path = f"store.previous_encryption_keys[{index}]"
        key = r.secret({"key": spec}, "key", path)
        if key.source == "invalid":
            continue
        if decode_key(key.value) is None:
            r.problem(path, f"must be 32 bytes in base64; the value from {key.source} is not")
        elif current.source != "invalid" and decode_key(key.value) == decode_key(current.value):
            r.problem(path, "is the same key as store.encryption_key")
        else:
            keys.append(key)
    return tuple(keys)
