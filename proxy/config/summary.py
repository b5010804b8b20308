"""The `starting` log record: what this process is about to run, in one place, as operators of
nginx, Envoy or Vault Agent expect in the first lines of a log.

Built from the config alone, and safe to log by construction: addresses are reduced to
scheme://host:port (no user, password, path or query), and no secret value is read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from proxy.config.model import Config

# Optional features, each with the test that it is configured. A feature added later (fleet,
# tracing, audit, protection...) adds its line here and appears in `features` when set.
FEATURES: tuple[tuple[str, Callable[[Config], bool]], ...] = (
    ("anonymous_users", lambda c: c.anonymous is not None),
    ("inbound_auth", lambda c: c.inbound_auth is not None),
    (
        "client_certificate",
        lambda c: c.upstream.tls is not None and c.upstream.tls.client_cert_file is not None,
    ),
    ("response_cache", lambda c: c.response_cache is not None),
)


def origin(url: str, default_port: int | None = None) -> str:
    """scheme://host:port of `url`, the port spelled out; nothing else of it."""
    parts = urlsplit(url)
    default = default_port or (443 if parts.scheme == "https" else 80)
    try:
        port = parts.port or default
    except ValueError:
        port = default
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


def _store(config: Config) -> dict[str, str] | None:
    if config.store is None:
        return None
    url = config.store.url
    if url.startswith("sqlite:"):
        return {"kind": "sqlite", "path": url[len("sqlite:///") :].split("?")[0]}
    parts = urlsplit(url)
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432
    database = parts.path.lstrip("/")
    return {
        "kind": "postgresql",
        "address": f"{parts.hostname or 'localhost'}:{port}",
        "database": database,
    }


def _response_cache(config: Config) -> dict[str, str] | None:
    cache = config.response_cache
    if cache is None:
        return None
    if cache.backend.startswith(("redis://", "rediss://")):
        return {"kind": "redis", "address": origin(cache.backend, 6379)}
    return {"kind": "sqlite" if cache.backend.startswith("sqlite:") else cache.backend}


def startup_summary(config: Config, version: str, identity_key_id: str) -> dict[str, Any]:
    """The fields of the `starting` record (all JSON-serialisable)."""
    egress = config.upstream.egress_proxy
    return {
        "version": version,
        "config_file": str(config.source_file) if config.source_file is not None else None,
        "listen": str(config.listen),
        "admin_listen": str(config.admin_listen),
        "public_url": config.public_url,  # validated: no user or password in it
        "upstreams": {
            "pay_api": origin(config.upstream.pay_api),
            "user_center": origin(config.upstream.user_center),
        },
        "egress_proxy": f"{egress.host}:{egress.port}" if egress is not None else None,
        "auth_mode": config.client.auth,
        "store": _store(config),
        "response_cache": _response_cache(config),
        "features": [name for name, configured in FEATURES if configured(config)],
        "identity_key_id": identity_key_id,
    }
