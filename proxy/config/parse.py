"""Reading the YAML config: every section validated, every problem reported at once.

The key names are part of the public contract (docs/configuration.md).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from proxy.config.audit import parse_audit
from proxy.config.crosscheck import check_listeners, check_upstream_tls
from proxy.config.egress import parse_egress_proxy
from proxy.config.fleet import parse_fleet
from proxy.config.inbound import HEADER_NAME, parse_inbound_auth
from proxy.config.jwt import read_auth, read_jwt
from proxy.config.model import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    MIN_HMAC_KEY_BYTES,
    Address,
    AnonymousConfig,
    ClientConfig,
    ClientTimeoutsConfig,
    Config,
    IdentityConfig,
    LoggingConfig,
    TokensConfig,
    UpstreamConfig,
)
from proxy.config.protection import parse_protection
from proxy.config.reader import ConfigError, Reader, yaml_problem
from proxy.config.response_cache import parse_response_cache
from proxy.config.store import parse_store
from proxy.config.tls import parse_tls
from proxy.config.tracing import parse_tracing

_DOMAIN = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")
_TOP_KEYS = (
    "listen", "admin_listen", "public_url", "upstream", "client", "identity", "anonymous",
    "store", "tokens", "shutdown_grace_seconds", "drain_delay_seconds", "max_body_bytes",
    "max_rewrite_bytes", "inbound_auth", "allow_unauthenticated_network", "response_cache",
    "logging", "client_timeouts", "max_connections",
    "admin_max_connections", "max_header_bytes",
    "reload_interval_seconds", "jwt",
    "max_buffered_bytes",
    "tracing", "audit",
    "fleet",
)  # fmt: skip


def config_path(explicit: str | None, env: Mapping[str, str] = os.environ) -> Path:
    """`--config`, else `$GINI_PROXY_CONFIG`, else `./config.yaml`."""
    return Path(explicit or env.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH)


def load_config(path: Path, env: Mapping[str, str] = os.environ) -> Config:
    """Read and validate a YAML config file; raises ConfigError listing every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError([f"cannot read config file {path}: {reason}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_problem(path, exc)]) from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([f"{path} must hold a mapping of keys at the top level"])
    config = build_config(data, env, path.resolve().parent)
    # Kept unresolved: a ConfigMap mount flips a `..data` symlink, and the reloader must see
    # the new target, not the directory the link pointed to at startup.
    return dataclasses.replace(config, source_file=path.absolute())


def build_config(data: Mapping[str, Any], env: Mapping[str, str], base_dir: Path) -> Config:
    """Validate an already parsed mapping (tests and `demo` build configs this way)."""
    r = Reader(env, base_dir)
    r.check_keys(data, "", _TOP_KEYS)
    listen = _address(r, data, "listen", "127.0.0.1:8080")
    admin = _address(r, data, "admin_listen", "0.0.0.0:9090")
    check_listeners(r, {"listen": listen, "admin_listen": admin})
    upstream = _upstream(r, data)
    check_upstream_tls(r, upstream)
    client = _client(r, data)
    identity = _identity(r, data)
    anonymous = _anonymous(r, data)
    store = parse_store(r, data)
    if anonymous is not None and store is None:
        r.problem("store", "is required when the anonymous section is present (flow 4)")
    inbound = parse_inbound_auth(r, data)
    allow_open = r.boolean(
        data, "allow_unauthenticated_network", "allow_unauthenticated_network", False
    )
    if not listen.is_loopback and inbound is None and not allow_open:
        r.problem(
            "listen",
            f"{listen} is reachable from the network but no inbound_auth is configured: anyone "
            "who can reach the proxy could act as every user. Configure inbound_auth, listen on "
            "127.0.0.1, or set allow_unauthenticated_network: true",
        )
    config = Config(
        listen=listen,
        admin_listen=admin,
        public_url=_public_url(r, data, listen),
        upstream=upstream,
        client=client,
        identity=identity,
        anonymous=anonymous,
        store=store,
        tokens=_tokens(r, data),
        shutdown_grace_seconds=r.number(
            data, "shutdown_grace_seconds", "shutdown_grace_seconds", 20, 0, 3600
        ),
        drain_delay_seconds=r.number(data, "drain_delay_seconds", "drain_delay_seconds", 5, 0, 600),
        max_body_bytes=r.integer(data, "max_body_bytes", "max_body_bytes", 64 << 20, 1, 1 << 40),
        max_rewrite_bytes=r.integer(
            data, "max_rewrite_bytes", "max_rewrite_bytes", 1 << 20, 0, 64 << 20
        ),
        inbound_auth=inbound,
        allow_unauthenticated_network=allow_open,
        response_cache=parse_response_cache(r, data),
        logging=_logging(r, data),
        client_timeouts=_client_timeouts(r, data),
        max_connections=r.integer(data, "max_connections", "max_connections", 1000, 1, 1_000_000),
        admin_max_connections=r.integer(
            data, "admin_max_connections", "admin_max_connections", 64, 1, 10_000
        ),
        max_header_bytes=r.integer(
            data, "max_header_bytes", "max_header_bytes", 32768, 1024, 1 << 20
        ),
        reload_interval_seconds=r.number(
            data, "reload_interval_seconds", "reload_interval_seconds", 30, 0, 86400
        ),
        jwt=read_jwt(r, data, client.auth),
        max_buffered_bytes=r.integer(
            data, "max_buffered_bytes", "max_buffered_bytes", 64 << 20, 1 << 20, 1 << 40
        ),
        tracing=parse_tracing(r, data),
        audit=parse_audit(r, data),
        fleet=parse_fleet(r, data),
    )
    if r.problems:
        raise ConfigError(r.problems)
    return config


def _address(r: Reader, data: Mapping[str, Any], key: str, default: str) -> Address:
    text = r.string(data, key, key, default)
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    valid_port = port.isascii() and port.isdigit() and 0 <= int(port) <= 65535
    # An IPv6 address needs its brackets: "::1" alone would read as host ":" and port 1.
    if not sep or not host or not valid_port or (":" in host and not bracketed):
        r.problem(key, f"must be HOST:PORT (e.g. 127.0.0.1:8080), got {text!r}")
        return Address("127.0.0.1", 0)
    return Address(host, int(port))


def _base_url(r: Reader, text: str, path: str) -> str:
    """Validate an absolute http(s) base URL; return it without a trailing slash."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        r.problem(path, f"must be an absolute http(s) URL, got {text!r}")
    elif parts.query or parts.fragment or parts.username or parts.password:
        r.problem(path, "must not contain a query, fragment or credentials")
    return text.rstrip("/")


def _public_url(r: Reader, data: Mapping[str, Any], listen: Address) -> str:
    if data.get("public_url") is None:
        if listen.host in ("0.0.0.0", "::"):  # noqa: S104 - comparing, not binding
            r.problem("public_url", "is required when listen is a wildcard address")
        return f"http://{listen}"
    return _base_url(r, r.string(data, "public_url", "public_url"), "public_url")


def _upstream(r: Reader, data: Mapping[str, Any]) -> UpstreamConfig:
    keys: tuple[str, ...] = ("pay_api", "user_center", "connect_timeout_seconds", "timeout_seconds")
    keys += ("max_retries", "tls", "egress_proxy")
    keys += ("protection",)
    d = r.section(data, "upstream", "upstream", keys) or {}
    return UpstreamConfig(
        pay_api=_base_url(
            r,
            r.string(d, "pay_api", "upstream.pay_api", "https://pay-api.gini.net"),
            "upstream.pay_api",
        ),
        user_center=_base_url(
            r,
            r.string(d, "user_center", "upstream.user_center", "https://user.gini.net"),
            "upstream.user_center",
        ),
        connect_timeout_seconds=r.number(
            d, "connect_timeout_seconds", "upstream.connect_timeout_seconds", 5, 0.01, 600
        ),
        timeout_seconds=r.number(d, "timeout_seconds", "upstream.timeout_seconds", 60, 0.01, 3600),
        max_retries=r.integer(d, "max_retries", "upstream.max_retries", 2, 0, 10),
        tls=parse_tls(r, d),
        egress_proxy=parse_egress_proxy(r, d),
        protection=parse_protection(r, d),
    )


def _client(r: Reader, data: Mapping[str, Any]) -> ClientConfig:
    d = r.section(data, "client", "client", ("id", "secret", "auth"))
    if d is None:
        r.problem("client", "is required (id and secret of your Gini API client)")
        d = {}
    return ClientConfig(
        id=r.string(d, "id", "client.id"),
        secret=r.secret(d, "secret", "client.secret"),
        auth=read_auth(r, d),
    )


def _identity(r: Reader, data: Mapping[str, Any]) -> IdentityConfig:
    d = r.section(data, "identity", "identity", ("header", "hmac_key", "key_id"))
    if d is None:
        r.problem("identity", "is required (at least identity.hmac_key)")
        d = {}
    header = r.string(d, "header", "identity.header", "X-User-Id")
    if not HEADER_NAME.match(header):
        r.problem("identity.header", f"{header!r} is not a valid HTTP header name")
    key = r.secret(d, "hmac_key", "identity.hmac_key")
    if key.source != "invalid" and len(key.encode()) < MIN_HMAC_KEY_BYTES:
        r.problem(
            "identity.hmac_key",
            f"must be at least {MIN_HMAC_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`), "
            f"got {len(key.encode())} from {key.source}",
        )
    return IdentityConfig(header=header, hmac_key=key, key_id=_key_id(r, d))


def _key_id(r: Reader, d: Mapping[str, Any]) -> str | None:
    """`identity.key_id`: the 16 hex digits `hash-user --key-id` prints, or None."""
    if d.get("key_id") is None:
        return None
    text = r.string(d, "key_id", "identity.key_id").strip().lower()
    if not _KEY_ID.match(text):
        r.problem("identity.key_id", "must be the 16 hex digits `hash-user --key-id` prints")
        return None
    return text


def _anonymous(r: Reader, data: Mapping[str, Any]) -> AnonymousConfig | None:
    d = r.section(data, "anonymous", "anonymous", ("email_domain",))
    if d is None:
        return None
    domain = r.string(d, "email_domain", "anonymous.email_domain")
    if domain and not _DOMAIN.match(domain):
        r.problem("anonymous.email_domain", f"{domain!r} is not a domain name")
    return AnonymousConfig(email_domain=domain.lower())


def _tokens(r: Reader, data: Mapping[str, Any]) -> TokensConfig:
    d = r.section(data, "tokens", "tokens", ("refresh_before_expiry_seconds", "max_cached")) or {}
    return TokensConfig(
        refresh_before_expiry_seconds=r.integer(
            d, "refresh_before_expiry_seconds", "tokens.refresh_before_expiry_seconds", 60, 0, 3600
        ),
        max_cached=r.integer(d, "max_cached", "tokens.max_cached", 100_000, 1, 10_000_000),
    )


def _logging(r: Reader, data: Mapping[str, Any]) -> LoggingConfig:
    keys = ("level", "format", "access_log", "access_log_sample_rate")
    d = r.section(data, "logging", "logging", keys) or {}
    level = r.string(d, "level", "logging.level", "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        r.problem("logging.level", "must be one of debug, info, warning, error")
        level = "info"
    fmt = r.string(d, "format", "logging.format", "json").lower()
    if fmt not in ("json", "text"):
        r.problem("logging.format", f"must be json or text, got {fmt!r}")
        fmt = "json"
    return LoggingConfig(
        level=level,
        access_log=r.boolean(d, "access_log", "logging.access_log", True),
        access_log_sample_rate=r.number(
            d, "access_log_sample_rate", "logging.access_log_sample_rate", 1.0, 0, 1
        ),
        format=fmt,
    )


def _client_timeouts(r: Reader, data: Mapping[str, Any]) -> ClientTimeoutsConfig:
    keys = ("header_seconds", "idle_seconds", "body_seconds", "send_seconds")
    d = r.section(data, "client_timeouts", "client_timeouts", keys) or {}

    def seconds(key: str, default: float) -> float:
        # Lower bound above zero: 0 would close every connection at once, not turn a bound off.
        return r.number(d, key, f"client_timeouts.{key}", default, 0.05, 86400)

    return ClientTimeoutsConfig(
        header_seconds=seconds("header_seconds", 10),
        idle_seconds=seconds("idle_seconds", 60),
        body_seconds=seconds("body_seconds", 30),
        send_seconds=seconds("send_seconds", 30),
    )
