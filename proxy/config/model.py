"""The typed, frozen configuration: one dataclass per section, defaults documented beside the
keys in docs/configuration.md. Reading and validating the YAML is `proxy.config.parse`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from proxy.config.audit import AuditConfig
from proxy.config.egress import EgressProxyConfig
from proxy.config.fleet import FleetConfig
from proxy.config.jwt import JwtConfig
from proxy.config.protection import ProtectionConfig
from proxy.config.response_cache import ResponseCacheConfig
from proxy.config.secret import Secret
from proxy.config.store import StoreConfig, url_password
from proxy.config.tls import TlsConfig
from proxy.config.tracing import TracingConfig

DEFAULT_CONFIG_PATH = "config.yaml"
CONFIG_ENV_VAR = "GINI_PROXY_CONFIG"
MIN_HMAC_KEY_BYTES = 32
MIN_INBOUND_KEY_BYTES = 16


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: we cannot know, so assume it is reachable

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    pay_api: str
    user_center: str
    connect_timeout_seconds: float
    timeout_seconds: float
    max_retries: int
    tls: TlsConfig | None = None
    egress_proxy: EgressProxyConfig | None = None
    protection: ProtectionConfig = field(default_factory=ProtectionConfig)  # on by default


@dataclass(frozen=True, slots=True)
class ClientConfig:
    id: str
    secret: Secret
    auth: str = "basic"  # basic | jwt: how flow-1 requests authenticate (config/jwt.py)


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    header: str
    hmac_key: Secret
    key_id: str | None = None  # pins the fingerprint of hmac_key (vending/keyguard.py)


@dataclass(frozen=True, slots=True)
class AnonymousConfig:
    email_domain: str


@dataclass(frozen=True, slots=True)
class TokensConfig:
    refresh_before_expiry_seconds: int
    max_cached: int


@dataclass(frozen=True, slots=True)
class InboundKey(Secret):
    """One inbound key and the name of the caller it belongs to (None for a bare key)."""

    caller: str | None = None


@dataclass(frozen=True, slots=True)
class InboundAuthConfig:
    header: str
    keys: tuple[InboundKey, ...]


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str
    access_log: bool
    access_log_sample_rate: float
    format: str = "json"  # json | text (a human at a terminal; the demo)


@dataclass(frozen=True, slots=True)
class ClientTimeoutsConfig:
    """Bounds on slow or idle callers of the proxy listener (see `proxy.web.connections`)."""

    header_seconds: float
    idle_seconds: float
    body_seconds: float
    send_seconds: float


@dataclass(frozen=True, slots=True)
class Config:
    listen: Address
    admin_listen: Address
    public_url: str
    upstream: UpstreamConfig
    client: ClientConfig
    identity: IdentityConfig
    anonymous: AnonymousConfig | None
    store: StoreConfig | None
    tokens: TokensConfig
    shutdown_grace_seconds: float
    drain_delay_seconds: float
    max_body_bytes: int
    max_rewrite_bytes: int
    inbound_auth: InboundAuthConfig | None
    allow_unauthenticated_network: bool
    response_cache: ResponseCacheConfig | None
    logging: LoggingConfig
    client_timeouts: ClientTimeoutsConfig
    max_connections: int
    admin_max_connections: int = 64  # the admin listener's own limit
    max_header_bytes: int = 32768  # request line and headers together; past it 431
    reload_interval_seconds: float = 30.0  # {file:} secrets re-read this often; 0 = SIGHUP only
    source_file: Path | None = None  # the YAML file read, as named (not resolved): watched only
    jwt: JwtConfig | None = None
    max_buffered_bytes: int = 64 << 20  # bodies held in memory at once, process-wide
    tracing: TracingConfig | None = None
    audit: AuditConfig | None = None
    fleet: FleetConfig | None = None  # replicas share tokens through Redis

    def secrets(self) -> list[str]:
        """Every secret value this config holds (fed to the log redactor)."""
        found = [self.client.secret.value, self.identity.hmac_key.value]
        if self.store is not None:
            found.append(self.store.encryption_key.value)
            password = url_password(self.store.url)  # postgresql://user:PASSWORD@host/db
            if password:
                found.append(password)
            if self.store.password is not None:
                found.append(self.store.password.value)
            found.extend(key.value for key in self.store.previous_encryption_keys)
        if self.inbound_auth is not None:
            found.extend(key.value for key in self.inbound_auth.keys)
        egress = self.upstream.egress_proxy
        if egress is not None and egress.password is not None:
            found.append(egress.password.value)
        if self.jwt is not None:
            found.extend(key.value for key in self.jwt.signing_keys)
        if self.tracing is not None:
            found.extend(value.value for _, value in self.tracing.headers)
        if self.fleet is not None:
            found.extend(self.fleet.secrets())
        return found


# END
