"""`fleet`: replicas share tokens and one fetch per key through Redis (optional section)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proxy.config.reader import Reader
from proxy.config.secret import Secret

_PREFIX = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")
_KEYS = ("redis_url", "password", "cluster", "key_prefix", "lock_seconds", "call_timeout_seconds")


@dataclass(frozen=True, slots=True)
class FleetConfig:
    redis_url: Secret  # a URL may carry a password, so it is held (and shown) as a secret
    password: Secret | None
    cluster: bool
    key_prefix: str
    lock_seconds: float
    call_timeout_seconds: float

    def secrets(self) -> list[str]:
        """The values the log redactor must hide: the password, and the URL's own."""
        found = [self.redis_url.value]
        embedded = urlsplit(self.redis_url.value).password if "@" in self.redis_url.value else None
        if embedded:
            found.append(embedded)
        if self.password is not None:
            found.append(self.password.value)
        return found


def parse_fleet(r: Reader, data: Mapping[str, Any]) -> FleetConfig | None:
    d = r.section(data, "fleet", "fleet", _KEYS)
    if d is None:
        return None
    url = r.secret(d, "redis_url", "fleet.redis_url")
    if url.source != "invalid":
        parts = urlsplit(url.value)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            # Never the value itself: it may hold a password.
            r.problem("fleet.redis_url", "must be a redis:// or rediss:// URL with a host")
        else:
            try:
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError:
                r.problem("fleet.redis_url", "has an invalid port")
    password = r.secret(d, "password", "fleet.password") if d.get("password") is not None else None
    prefix = r.string(d, "key_prefix", "fleet.key_prefix", "gini-auth-proxy:")
    if not _PREFIX.match(prefix):
        r.problem("fleet.key_prefix", "must be 1 to 64 characters of letters, digits and _.:/-")
    lock = r.number(d, "lock_seconds", "fleet.lock_seconds", 10, 1, 600)
    timeout = r.number(d, "call_timeout_seconds", "fleet.call_timeout_seconds", 0.25, 0.01, 10)
    if timeout * 2 > lock:
        r.problem(
            "fleet.call_timeout_seconds",
            "must be at most half of fleet.lock_seconds (a lease is renewed well before it lapses)",
        )
    return FleetConfig(
        redis_url=url,
        password=password,
        cluster=r.boolean(d, "cluster", "fleet.cluster", False),
        key_prefix=prefix,
        lock_seconds=lock,
        call_timeout_seconds=timeout,
    )
