"""The configuration: one frozen `Config` read from YAML, with every problem reported at once.

Sections with rules of their own have their own module (`egress`, `tls`, `store`, `jwt`);
`model` holds the rest of the dataclasses, `parse` reads the file, `reader` is the validating
reader both use, `secret` resolves `{env:}`/`{file:}` sources and `reload` re-reads them.
`memo` is the fixed tuning beside them: the hot path's bounded memo type and its size table.
"""

from proxy.config.model import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    MIN_HMAC_KEY_BYTES,
    MIN_INBOUND_KEY_BYTES,
    Address,
    AnonymousConfig,
    ClientConfig,
    ClientTimeoutsConfig,
    Config,
    IdentityConfig,
    InboundAuthConfig,
    LoggingConfig,
    TokensConfig,
    UpstreamConfig,
)
from proxy.config.parse import build_config, config_path, load_config
from proxy.config.reader import ConfigError
from proxy.config.response_cache import CacheRoute, ResponseCacheConfig
from proxy.config.store import StoreConfig

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "MIN_HMAC_KEY_BYTES",
    "MIN_INBOUND_KEY_BYTES",
    "Address",
    "AnonymousConfig",
    "CacheRoute",
    "ClientConfig",
    "ClientTimeoutsConfig",
    "Config",
    "ConfigError",
    "IdentityConfig",
    "InboundAuthConfig",
    "LoggingConfig",
    "ResponseCacheConfig",
    "StoreConfig",
    "TokensConfig",
    "UpstreamConfig",
    "build_config",
    "config_path",
    "load_config",
]
