"""Tests of configuration loading and validation (proxy/config/: parse, reader, secret, ...)
and of the `check-config` / `hash-user` commands (proxy/cli.py)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import proxy.config.model as config_module
from proxy.cli import main
from proxy.config import (
    Address,
    CacheRoute,
    Config,
    InboundAuthConfig,
    build_config,
    config_path,
    load_config,
)
from proxy.config.model import InboundKey
from proxy.config.reader import ConfigError
from proxy.config.secret import Secret, resolve_secret

from .conftest import examples

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yaml"
NETWORK_EXAMPLE = ROOT / "config.network.example.yaml"
DOCS = ROOT / "docs" / "configuration.md"

CLIENT_SECRET = "client-secret-value-4f1c2e"
HMAC_KEY = "hmac-key-0123456789abcdef0123456789abcdef"
STORE_KEY = base64.b64encode(b"K" * 32).decode()
INBOUND_KEY = "inbound-key-abcdefghijklmnop"

MINIMAL: dict[str, Any] = {
    "client": {"id": "my-client", "secret": CLIENT_SECRET},
    "identity": {"hmac_key": HMAC_KEY},
}


def with_(base: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """`base` with top-level keys replaced (sections are replaced whole)."""
    data = dict(base)
    data.update(changes)
    return data


def build(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    return build_config(data, env or {}, Path("/nonexistent-base"))


def problems_of(
    data: Mapping[str, Any], env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config(data, env or {}, base_dir or Path("/nonexistent-base"))
    assert caught.value.problems, "a ConfigError always lists its problems"
    return caught.value.problems


def has(problems: list[str], path: str, *words: str) -> bool:
    """Some problem is about `path` (its key path comes first) and mentions every word."""
    return any(
        p.startswith(f"{path}:") and all(w.lower() in p.lower() for w in words) for p in problems
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults ------------------------------------------------------------------------------


def test_minimal_config_gets_every_default() -> None:
    config = build(MINIMAL)
    assert config.listen == Address("127.0.0.1", 8080)
    assert config.admin_listen == Address("0.0.0.0", 9090)
    assert config.public_url == "http://127.0.0.1:8080"
    assert config.upstream.pay_api == "https://pay-api.gini.net"
    assert config.upstream.user_center == "https://user.gini.net"
    assert config.upstream.connect_timeout_seconds == 5
    assert config.upstream.timeout_seconds == 60
    assert config.upstream.max_retries == 2
    assert config.client.id == "my-client"
    assert config.client.secret.value == CLIENT_SECRET
    assert config.identity.header == "X-User-Id"
    assert config.identity.hmac_key.value == HMAC_KEY
    assert config.anonymous is None
    assert config.store is None
    assert config.tokens.refresh_before_expiry_seconds == 60
    assert config.tokens.max_cached == 100_000
    assert config.shutdown_grace_seconds == 20
    assert config.drain_delay_seconds == 5
    assert config.max_body_bytes == 64 * 1024 * 1024
    assert config.max_rewrite_bytes == 1024 * 1024
    assert config.inbound_auth is None
    assert config.allow_unauthenticated_network is False
    assert config.response_cache is None
    assert config.logging.level == "info"
    assert config.logging.access_log is True
    assert config.logging.access_log_sample_rate == 1.0


def test_optional_sections_get_their_defaults() -> None:
    config = build(
        with_(
            MINIMAL,
            inbound_auth={"keys": INBOUND_KEY},
            response_cache={"routes": ["/paymentProviders"]},
        )
    )
    assert config.inbound_auth is not None
    assert config.inbound_auth.header == "X-Proxy-Key"
    assert config.response_cache is not None
    assert config.response_cache.ttl_seconds == 300
    assert config.response_cache.backend == "memory"
    assert config.response_cache.max_entry_bytes == 1024 * 1024
    assert config.response_cache.routes == (CacheRoute("/paymentProviders", False),)


def test_an_empty_file_lists_the_required_sections(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", "# nothing yet\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert has(caught.value.problems, "client", "required")
    assert has(caught.value.problems, "identity", "required")


def test_required_keys_inside_sections() -> None:
    problems = problems_of({"client": {}, "identity": {}})
    assert has(problems, "client.id", "required")
    assert has(problems, "client.secret", "required")
    assert has(problems, "identity.hmac_key", "required")


def test_base_urls_lose_their_trailing_slash() -> None:
    config = build(
        with_(
            MINIMAL,
            public_url="https://proxy.example/gini/",
            upstream={"pay_api": "http://127.0.0.1:9/", "user_center": "http://127.0.0.1:10"},
        )
    )
    assert config.public_url == "https://proxy.example/gini"
    assert config.upstream.pay_api == "http://127.0.0.1:9"


def test_secrets_lists_every_secret_value() -> None:
    config = build(
        with_(
            MINIMAL,
            anonymous={"email_domain": "example.com"},
            store={"url": "sqlite:////tmp/x.db", "encryption_key": STORE_KEY},
            inbound_auth={"keys": f"{INBOUND_KEY}\n{INBOUND_KEY}-2"},
        )
    )
    assert sorted(config.secrets()) == sorted(
        [CLIENT_SECRET, HMAC_KEY, STORE_KEY, INBOUND_KEY, f"{INBOUND_KEY}-2"]
    )


# --- ${VAR} expansion ----------------------------------------------------------------------


def test_variables_are_expanded() -> None:
    env = {"CID": "client-from-env", "HOST": "127.0.0.2", "PORT": "8181"}
    data = with_(
        MINIMAL,
        client={"id": "${CID}", "secret": CLIENT_SECRET},
        listen="${HOST}:${PORT}",
    )
    config = build(data, env)
    assert config.client.id == "client-from-env"
    assert config.listen == Address("127.0.0.2", 8181)


def test_defaults_apply_when_unset_or_empty() -> None:
    data = with_(MINIMAL, listen="${HOST:-127.0.0.1}:${PORT:-9999}")
    assert build(data, {}).listen == Address("127.0.0.1", 9999)
    assert build(data, {"PORT": ""}).listen == Address("127.0.0.1", 9999)  # POSIX `:-`
    assert build(data, {"PORT": "7000"}).listen == Address("127.0.0.1", 7000)
    # An empty default is allowed.
    config = build(with_(MINIMAL, client={"id": "a${SUFFIX:-}b", "secret": "s3cret-xyz"}))
    assert config.client.id == "ab"


def test_double_dollar_is_a_literal_dollar() -> None:
    env = {"X": "value"}
    data = with_(MINIMAL, client={"id": "p$$q-$${X}-$$$${X}-$$${X}", "secret": "s$$cret"})
    config = build(data, env)
    assert config.client.id == "p$q-${X}-$${X}-$value"
    assert config.client.secret.value == "s$cret"


def test_text_that_is_not_a_variable_is_kept() -> None:
    data = with_(MINIMAL, client={"id": "$X ${ not-a-var} $", "secret": "pa$word"})
    config = build(data, {"X": "no"})
    assert config.client.id == "$X ${ not-a-var} $"
    assert config.client.secret.value == "pa$word"


def test_a_missing_variable_is_reported_with_its_key_path() -> None:
    data = with_(
        MINIMAL,
        client={"id": "${GINI_CLIENT_ID}", "secret": "${GINI_SECRET_TEXT}"},
        upstream={"pay_api": "${PAY_API_URL}"},
    )
    problems = problems_of(data)
    assert has(problems, "client.id", "GINI_CLIENT_ID", "not set")
    assert has(problems, "client.secret", "GINI_SECRET_TEXT", "not set")
    assert has(problems, "upstream.pay_api", "PAY_API_URL", "not set")


def test_integers_numbers_and_booleans_from_variables() -> None:
    env = {"MAX": "1000", "GRACE": "2.5", "OPEN": "true", "RATE": "0.25", "LOG": "false"}
    data = with_(
        MINIMAL,
        listen="0.0.0.0:8080",  # checking the open-network rule
        public_url="http://proxy.internal",
        max_body_bytes="${MAX}",
        shutdown_grace_seconds="${GRACE}",
        allow_unauthenticated_network="${OPEN}",
        logging={"access_log": "${LOG}", "access_log_sample_rate": "${RATE}"},
        tokens={"max_cached": " 12 "},
    )
    config = build(data, env)
    assert config.max_body_bytes == 1000
    assert config.shutdown_grace_seconds == 2.5
    assert config.allow_unauthenticated_network is True
    assert config.logging.access_log is False
    assert config.logging.access_log_sample_rate == 0.25
    assert config.tokens.max_cached == 12


@pytest.mark.parametrize("value", ["abc", "-5", "1.5", "1e3", "\u00b2", "\u0661", True, 2.0, [1]])
def test_bad_integers_are_reported(value: object) -> None:
    problems = problems_of(with_(MINIMAL, max_body_bytes=value))
    assert has(problems, "max_body_bytes", "integer")


def test_out_of_range_values_are_reported() -> None:
    data = with_(
        MINIMAL,
        max_body_bytes=0,
        upstream={"timeout_seconds": -1, "connect_timeout_seconds": 10**400, "max_retries": 11},
        logging={"access_log_sample_rate": 1.5, "level": "verbose", "access_log": "yes"},
        tokens={"refresh_before_expiry_seconds": "nan"},
    )
    problems = problems_of(data)
    assert has(problems, "max_body_bytes", "between")
    assert has(problems, "upstream.timeout_seconds", "between")
    assert has(problems, "upstream.connect_timeout_seconds", "between")
    assert has(problems, "upstream.max_retries", "between")
    assert has(problems, "logging.access_log_sample_rate", "between")
    assert has(problems, "logging.level", "debug, info")
    assert has(problems, "logging.access_log", "true or false")
    assert has(problems, "tokens.refresh_before_expiry_seconds", "integer")


# --- secrets -------------------------------------------------------------------------------


def test_secret_as_inline_string() -> None:
    secret = resolve_secret("  inline-value\n", {}, Path("/"))
    assert secret == Secret("inline-value", "inline")


def test_secret_from_env() -> None:
    data = with_(MINIMAL, client={"id": "c", "secret": {"env": "GINI_CLIENT_SECRET"}})
    config = build(data, {"GINI_CLIENT_SECRET": CLIENT_SECRET + "\n"})
    assert config.client.secret.value == CLIENT_SECRET
    assert config.client.secret.source == "env:GINI_CLIENT_SECRET"


def test_secret_from_a_missing_env_variable_is_reported() -> None:
    data = with_(MINIMAL, client={"id": "c", "secret": {"env": "GINI_CLIENT_SECRET"}})
    assert has(problems_of(data), "client.secret", "GINI_CLIENT_SECRET", "not set")


def test_secret_file_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "proxy"
    write(folder / "secrets" / "hmac", HMAC_KEY + "\n")  # as `echo` or a Secret volume leaves it
    path = write(
        folder / "config.yaml",
        "client: {id: c, secret: inline-secret}\nidentity: {hmac_key: {file: secrets/hmac}}\n",
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative to the file's folder, not the working directory
    config = load_config(Path(os.path.relpath(path, elsewhere)), {})
    assert config.identity.hmac_key.value == HMAC_KEY
    assert config.identity.hmac_key.source == f"file:{(folder / 'secrets' / 'hmac').resolve()}"


def test_secret_file_absolute_path(tmp_path: Path) -> None:
    key_file = write(tmp_path / "abs" / "key", f"\n  {HMAC_KEY}\r\n\n")
    data = with_(MINIMAL, identity={"hmac_key": {"file": str(key_file)}})
    assert build(data).identity.hmac_key.value == HMAC_KEY


def test_secret_file_path_expands_variables(tmp_path: Path) -> None:
    write(tmp_path / "run" / "hmac-key", HMAC_KEY)
    data = with_(MINIMAL, identity={"hmac_key": {"file": "${SECRETS_DIR:-/var/run}/hmac-key"}})
    config = build(data, {"SECRETS_DIR": str(tmp_path / "run")})
    assert config.identity.hmac_key.value == HMAC_KEY
    data = with_(MINIMAL, client={"id": "c", "secret": {"env": "${PREFIX}_SECRET"}})
    assert build(data, {"PREFIX": "GINI", "GINI_SECRET": "abcdef"}).client.secret.value == "abcdef"


def test_unreadable_secret_files_are_reported(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    write(tmp_path / "empty", "\n\n")
    write(tmp_path / "binary", "")
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00bad")
    data = with_(
        MINIMAL,
        client={"id": "c", "secret": {"file": "missing"}},
        identity={"hmac_key": {"file": "a-directory"}},
        store={"url": "sqlite:////tmp/s.db", "encryption_key": {"file": "empty"}},
        inbound_auth={"keys": {"file": "binary"}},
    )
    problems = problems_of(data, base_dir=tmp_path)
    assert has(problems, "client.secret", "cannot read", str(tmp_path / "missing"))
    assert has(problems, "identity.hmac_key", "cannot read", "a-directory")
    assert has(problems, "store.encryption_key", "empty")
    assert has(problems, "inbound_auth.keys", "not UTF-8")
    assert len(problems) == 4  # nothing else: the placeholders do not cascade


@pytest.mark.parametrize(
    "spec",
    [
        {"vault": "x"},
        {"env": "A", "file": "B"},
        {"env": ""},
        {"file": 12},
        {},
        ["a", "b"],
        12345,
        "",
        "   ",
    ],
)
def test_malformed_secret_specs_are_reported(spec: object) -> None:
    data = with_(MINIMAL, client={"id": "c", "secret": spec})
    problems = problems_of(data)
    assert [p for p in problems if p.startswith("client.secret:")], problems


def test_secrets_never_show_in_repr_or_str() -> None:
    config = build(
        with_(
            MINIMAL,
            anonymous={"email_domain": "example.com"},
            store={"url": "sqlite:////tmp/x.db", "encryption_key": STORE_KEY},
            inbound_auth={"keys": INBOUND_KEY},
        )
    )
    for text in (repr(config), str(config), repr(config.client), str(config.identity.hmac_key)):
        for secret in (CLIENT_SECRET, HMAC_KEY, STORE_KEY, INBOUND_KEY):
            assert secret not in text
    assert "Secret(source='inline')" in repr(config.client)


# --- unknown keys and collecting every problem ----------------------------------------------


def test_unknown_keys_are_reported_at_every_level() -> None:
    data = with_(
        MINIMAL,
        lissten="127.0.0.1:1",
        upstream={"pay_api": "https://pay-api.gini.net", "timeout": 5},
        identity={"hmac_key": HMAC_KEY, "hmac": "x"},
        response_cache={"routes": [{"path": "/x", "shard": True}]},
        logging={"fromat": "json"},
    )
    problems = problems_of(data)
    assert has(problems, "lissten", "unknown key", "listen")
    assert has(problems, "upstream.timeout", "unknown key", "timeout_seconds")
    assert has(problems, "identity.hmac", "unknown key")
    assert has(problems, "response_cache.routes[0].shard", "unknown key", "shared")
    assert has(problems, "logging.fromat", "unknown key", "format")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = {
        "listen": "0.0.0.0:8080",  # open without inbound_auth, no public_url
        "admin_listen": "nonsense",
        "upstream": {"pay_api": "ftp://pay-api.gini.net", "timeout_seconds": "soon"},
        "client": {"id": "${NO_SUCH_VAR}", "secret": {"env": "NO_SUCH_SECRET"}},
        "identity": {"header": "X User", "hmac_key": "too-short"},
        "anonymous": {"email_domain": "not a domain"},
        "store": {"url": "mysql://x", "encryption_key": "bm90IDMyIGJ5dGVz"},
        "tokens": {"max_cached": 0},
        "inbound_auth": None,
        "response_cache": {"routes": ["no-slash", 3], "backend": "memcached://x"},
        "unknown_thing": 1,
    }
    problems = problems_of(data, base_dir=tmp_path)
    expected = [
        ("listen", "inbound_auth"),
        ("public_url", "wildcard"),
        ("admin_listen", "HOST:PORT"),
        ("upstream.pay_api", "http(s)"),
        ("upstream.timeout_seconds", "number"),
        ("client.id", "NO_SUCH_VAR"),
        ("client.secret", "NO_SUCH_SECRET"),
        ("identity.header", "header name"),
        ("identity.hmac_key", "32 bytes"),
        ("anonymous.email_domain", "domain"),
        ("store.url", "sqlite"),
        ("store.encryption_key", "base64"),
        ("tokens.max_cached", "between"),
        ("response_cache.routes[0].path", "must start with /"),
        ("response_cache.routes[1]", "path template"),
        ("response_cache.backend", "memory"),
        ("unknown_thing", "unknown key"),
    ]
    for path, word in expected:
        assert has(problems, path, word), (path, problems)
    assert len(problems) == len(expected), problems
    # The exception's text lists them all, one per line.
    message = str(ConfigError(problems))
    assert all(f"  - {p}" in message for p in problems)


# --- the open-network rule -----------------------------------------------------------------


@pytest.mark.parametrize(
    "listen",
    ["0.0.0.0:8080", "10.1.2.3:8080", "[::]:8080", "[2001:db8::1]:8080", "proxy.internal:8080"],
)
def test_network_listen_without_inbound_auth_is_refused(listen: str) -> None:
    data = with_(MINIMAL, listen=listen, public_url="http://proxy.internal:8080")
    problems = problems_of(data)
    assert has(problems, "listen", "inbound_auth", "allow_unauthenticated_network")


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:8080", "127.0.0.53:1", "localhost:8080", "[::1]:8080"]
)
def test_loopback_listen_needs_no_inbound_auth(listen: str) -> None:
    assert build(with_(MINIMAL, listen=listen)).listen.is_loopback


def test_network_listen_with_inbound_auth_is_accepted() -> None:
    data = with_(
        MINIMAL,
        listen="0.0.0.0:8080",
        public_url="http://gini-proxy.svc:8080",
        inbound_auth={"keys": INBOUND_KEY},
    )
    config = build(data)
    assert config.inbound_auth is not None
    assert config.inbound_auth.keys == (InboundKey(INBOUND_KEY, "inline#1"),)


def test_network_listen_allowed_explicitly() -> None:
    data = with_(
        MINIMAL,
        listen="10.0.0.1:8080",
        allow_unauthenticated_network=True,
    )
    config = build(data)
    assert config.allow_unauthenticated_network is True
    assert config.public_url == "http://10.0.0.1:8080"


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:8080"])
def test_public_url_is_required_for_a_wildcard_listen(listen: str) -> None:
    data = with_(MINIMAL, listen=listen, inbound_auth={"keys": INBOUND_KEY})
    assert has(problems_of(data), "public_url", "required", "wildcard")
    config = build(with_(data, public_url="https://proxy.example"))
    assert config.public_url == "https://proxy.example"


@pytest.mark.parametrize(
    ("url", "word"),
    [
        ("proxy.example", "absolute"),
        ("ftp://proxy.example", "absolute"),
        ("https://proxy.example/?x=1", "query"),
        ("https://u:p@proxy.example", "credentials"),
        ("https://proxy.example/#f", "fragment"),
    ],
)
def test_bad_public_urls_are_reported(url: str, word: str) -> None:
    assert has(problems_of(with_(MINIMAL, public_url=url)), "public_url", word)


def test_admin_listen_must_differ_from_listen() -> None:
    data = with_(MINIMAL, listen="127.0.0.1:9090", admin_listen="127.0.0.1:9090")
    assert has(problems_of(data), "admin_listen", "differ")


# --- listen parsing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080, "127.0.0.1:8080"),
        ("[::1]:8080", "::1", 8080, "[::1]:8080"),
        ("[fe80::1%eth0]:80", "fe80::1%eth0", 80, "[fe80::1%eth0]:80"),
        ("localhost:0", "localhost", 0, "localhost:0"),
        ("127.0.0.1:65535", "127.0.0.1", 65535, "127.0.0.1:65535"),
    ],
)
def test_listen_parsing(text: str, host: str, port: int, shown: str) -> None:
    data = with_(MINIMAL, listen=text, admin_listen="127.0.0.1:1")
    config = build(with_(data, allow_unauthenticated_network=True))
    assert config.listen == Address(host, port)
    assert str(config.listen) == shown


@pytest.mark.parametrize(
    "text",
    [
        "8080",
        "127.0.0.1",
        "127.0.0.1:",
        ":8080",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:http",
        "[::1]",
        "::1",  # an IPv6 address needs brackets
        "::1:8080",
        "[]:8080",
        "127.0.0.1:\u0668\u0660",  # Arabic-Indic digits are not a port
        12345,
    ],
)
def test_bad_listen_values_are_reported(text: object) -> None:
    problems = problems_of(with_(MINIMAL, listen=text))
    assert [p for p in problems if p.startswith("listen:")], problems


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=30))
def test_property_listen_never_crashes(text: str) -> None:
    data = with_(
        MINIMAL, listen=text, admin_listen="127.0.0.1:1", allow_unauthenticated_network=True
    )
    try:
        config = build_config(data, {}, Path("/"))
    except ConfigError as exc:
        problems = exc.problems
    else:
        assert 0 <= config.listen.port <= 65535
        assert str(config.listen).endswith(f":{config.listen.port}")
        return
    assert [p for p in problems if p.startswith("listen:")]


# --- key material --------------------------------------------------------------------------


def test_hmac_key_needs_32_bytes() -> None:
    assert build(with_(MINIMAL, identity={"hmac_key": "k" * 32})).identity.hmac_key.value
    problems = problems_of(with_(MINIMAL, identity={"hmac_key": "k" * 31}))
    assert has(problems, "identity.hmac_key", "at least 32 bytes", "got 31", "openssl rand")
    assert "k" * 31 not in " ".join(problems)
    # Bytes, not characters: 16 two-byte characters are 32 bytes.
    assert build(with_(MINIMAL, identity={"hmac_key": "é" * 16})).identity.hmac_key.value


@pytest.mark.parametrize(
    "key",
    [
        base64.b64encode(b"\x01" * 32).decode(),
        base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(),  # URL-safe alphabet accepted
        base64.b64encode(b"\xfb\xff" * 16).decode(),
    ],
)
def test_store_key_of_32_base64_bytes(key: str) -> None:
    data = with_(
        MINIMAL,
        store={"url": "postgresql://proxy@db/gini", "encryption_key": key},
    )
    store = build(data).store
    assert store is not None
    assert len(store.key_bytes) == 32


@pytest.mark.parametrize(
    "key",
    [
        base64.b64encode(b"x" * 16).decode(),
        base64.b64encode(b"x" * 33).decode(),
        "not base64 at all!",
        "a" * 43,  # 32 bytes' worth of characters but no padding
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",  # hex, 48 bytes
    ],
)
def test_store_key_must_be_32_base64_bytes(key: str) -> None:
    data = with_(MINIMAL, store={"url": "sqlite:////tmp/x.db", "encryption_key": key})
    problems = problems_of(data)
    assert has(problems, "store.encryption_key", "32", "base64", "openssl rand -base64 32")
    assert key not in " ".join(problems)


def test_store_url_schemes() -> None:
    for url in ("sqlite:////var/lib/x.db", "postgresql://u@h/db", "postgres://u@h:5432/db"):
        data = with_(MINIMAL, store={"url": url, "encryption_key": STORE_KEY})
        store = build(data).store
        assert store is not None
        assert store.url == url
    for url in ("sqlite:x.db", "mysql://h/db", "/var/lib/x.db"):
        data = with_(MINIMAL, store={"url": url, "encryption_key": STORE_KEY})
        assert has(problems_of(data), "store.url", "sqlite")


@pytest.mark.parametrize("url", ["sqlite:///store.db", "sqlite:///data/store.db", "sqlite:///"])
def test_relative_sqlite_store_paths_are_refused_with_the_fix(url: str) -> None:
    # A relative file is lost with the container: every anonymous user would become new.
    data = with_(MINIMAL, store={"url": url, "encryption_key": STORE_KEY})
    assert has(problems_of(data), "store.url", "relative", "four slashes", "absolute")


def test_anonymous_needs_a_store() -> None:
    problems = problems_of(with_(MINIMAL, anonymous={"email_domain": "example.com"}))
    assert has(problems, "store", "required", "anonymous")


def test_anonymous_email_domain() -> None:
    data = with_(
        MINIMAL,
        anonymous={"email_domain": "Users.Example.COM"},
        store={"url": "sqlite:////tmp/x.db", "encryption_key": STORE_KEY},
    )
    anonymous = build(data).anonymous
    assert anonymous is not None
    assert anonymous.email_domain == "users.example.com"
    for bad in ("localhost", "exa mple.com", "@example.com", "-x.example.com", ""):
        data["anonymous"] = {"email_domain": bad}
        assert has(problems_of(data), "anonymous.email_domain"), bad


# --- inbound_auth keys ---------------------------------------------------------------------


def test_inbound_keys_one_per_line(tmp_path: Path) -> None:
    write(
        tmp_path / "keys",
        f"# rotated 2024-05\n{INBOUND_KEY}\n\n   \n  # old key below\n  {INBOUND_KEY}-next  \n",
    )
    data = with_(
        MINIMAL,
        inbound_auth={"header": "X-Internal-Key", "keys": {"file": "keys"}},
    )
    inbound = build_config(data, {}, tmp_path).inbound_auth
    assert inbound is not None
    assert inbound.header == "X-Internal-Key"
    assert [k.value for k in inbound.keys] == [INBOUND_KEY, f"{INBOUND_KEY}-next"]


def test_short_inbound_keys_are_reported_by_line_not_value(tmp_path: Path) -> None:
    write(tmp_path / "keys", f"{INBOUND_KEY}\nshort-key\n# comment\ntiny\n")
    data = with_(MINIMAL, inbound_auth={"keys": {"file": "keys"}})
    problems = problems_of(data, base_dir=tmp_path)
    assert has(problems, "inbound_auth.keys", "16 bytes", "#2", "#4")
    text = " ".join(problems)
    assert "short-key" not in text
    assert "tiny" not in text
    assert INBOUND_KEY not in text


def test_inbound_keys_file_with_only_comments_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "keys", "# no keys yet\n\n")
    data = with_(MINIMAL, inbound_auth={"keys": {"file": "keys"}})
    assert has(problems_of(data, base_dir=tmp_path), "inbound_auth.keys", "one key per line")


def test_inbound_auth_needs_keys_and_a_valid_header() -> None:
    problems = problems_of(with_(MINIMAL, inbound_auth={"header": "Bad Header:"}))
    assert has(problems, "inbound_auth.keys", "required")
    assert has(problems, "inbound_auth.header", "header name")


# --- response_cache ------------------------------------------------------------------------


def test_response_cache_routes_as_strings_or_mappings() -> None:
    data = with_(
        MINIMAL,
        response_cache={
            "routes": [
                "/paymentProviders",
                {"path": "/paymentProviders/{id}", "shared": True},
                {"path": "/configurations"},
                {"path": "/x", "shared": "false"},
            ],
            "ttl_seconds": 60,
            "backend": "redis://cache:6379/0",
            "max_entry_bytes": 4096,
        },
    )
    cache = build(data).response_cache
    assert cache is not None
    assert cache.routes == (
        CacheRoute("/paymentProviders", False),
        CacheRoute("/paymentProviders/{id}", True),
        CacheRoute("/configurations", False),
        CacheRoute("/x", False),
    )
    assert (cache.ttl_seconds, cache.backend, cache.max_entry_bytes) == (
        60,
        "redis://cache:6379/0",
        4096,
    )


@pytest.mark.parametrize("backend", ["memory", "sqlite:////var/cache/x.db", "rediss://h:6380/1"])
def test_response_cache_backends(backend: str) -> None:
    cache = build(with_(MINIMAL, response_cache={"backend": backend})).response_cache
    assert cache is not None
    assert cache.backend == backend
    assert cache.routes == ()


@pytest.mark.parametrize("routes", [5, True, "/paymentProviders", {"path": "/x"}])
def test_response_cache_routes_must_be_a_list(routes: object) -> None:
    problems = problems_of(with_(MINIMAL, response_cache={"routes": routes}))
    assert has(problems, "response_cache.routes", "list")


def test_bad_response_cache_routes_are_reported() -> None:
    data = with_(
        MINIMAL,
        response_cache={
            "routes": [None, {"shared": True}, {"path": "/x", "shared": "maybe"}, "x"],
            "backend": "sqlite:///relative.db",
        },
    )
    problems = problems_of(data)
    assert has(problems, "response_cache.routes[0]", "path template")
    assert has(problems, "response_cache.routes[1].path", "required")
    assert has(problems, "response_cache.routes[2].shared", "true or false")
    assert has(problems, "response_cache.routes[3].path", "must start with /")
    assert has(problems, "response_cache.backend", "sqlite:////")


# --- files ---------------------------------------------------------------------------------


def test_yaml_syntax_errors_are_reported_with_their_line(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", "listen: 127.0.0.1:8080\nclient:\n  id: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    (problem,) = caught.value.problems
    assert str(path) in problem
    assert "not valid YAML" in problem
    assert re.search(r"line [34]\b", problem), problem


def test_yaml_tab_indentation_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", "client:\n\tid: x\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert "line 2" in caught.value.problems[0]


@pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "config.yaml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert "mapping" in caught.value.problems[0]


def test_unreadable_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.yaml", {})
    assert "cannot read config file" in caught.value.problems[0]
    (tmp_path / "latin1.yaml").write_bytes(b"client: {id: J\xfcrgen}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "latin1.yaml", {})
    assert "UTF-8" in caught.value.problems[0]


def test_sections_must_be_mappings() -> None:
    problems = problems_of(with_(MINIMAL, upstream="https://pay-api.gini.net", tokens=[1]))
    assert has(problems, "upstream", "mapping")
    assert has(problems, "tokens", "mapping")


def test_config_path_search_order(tmp_path: Path) -> None:
    assert config_path("given.yaml", {"GINI_PROXY_CONFIG": "env.yaml"}) == Path("given.yaml")
    assert config_path(None, {"GINI_PROXY_CONFIG": "env.yaml"}) == Path("env.yaml")
    assert config_path(None, {"GINI_PROXY_CONFIG": ""}) == Path("config.yaml")
    assert config_path(None, {}) == Path("config.yaml")


# --- hypothesis: nothing a YAML file can hold crashes the loader -----------------------------

_yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["${X}", "${X:-5}", "$$", "true", "10", "/x", "{id}", "[::1]:1"]),
)
_yaml_values = st.recursive(
    _yaml_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(
            st.sampled_from(["env", "file", "path", "shared", "url", "keys", "x"]),
            children,
            max_size=2,
        ),
    ),
    max_leaves=6,
)
_KEY_PATHS = [
    ("listen",),
    ("admin_listen",),
    ("public_url",),
    ("upstream",),
    ("upstream", "pay_api"),
    ("upstream", "timeout_seconds"),
    ("upstream", "max_retries"),
    ("client",),
    ("client", "secret"),
    ("identity", "hmac_key"),
    ("identity", "header"),
    ("anonymous",),
    ("anonymous", "email_domain"),
    ("store",),
    ("store", "url"),
    ("store", "encryption_key"),
    ("tokens", "max_cached"),
    ("max_body_bytes",),
    ("shutdown_grace_seconds",),
    ("inbound_auth",),
    ("inbound_auth", "keys"),
    ("allow_unauthenticated_network",),
    ("response_cache",),
    ("response_cache", "routes"),
    ("response_cache", "backend"),
    ("logging",),
    ("logging", "level"),
    ("logging", "access_log_sample_rate"),
    ("bogus",),
]


@settings(max_examples=examples(300), suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_KEY_PATHS), _yaml_values), max_size=6))
def test_property_any_value_anywhere_is_a_config_or_a_config_error(
    changes: list[tuple[tuple[str, ...], object]],
) -> None:
    data: dict[str, Any] = {
        "client": {"id": "c", "secret": CLIENT_SECRET},
        "identity": {"hmac_key": HMAC_KEY},
    }
    for path, value in changes:
        target = data
        for key in path[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        target[path[-1]] = value
    try:
        config = build_config(data, {"X": "7"}, Path("/nonexistent-base"))
    except ConfigError as exc:
        problems, text = exc.problems, str(exc)
    else:
        assert isinstance(config, Config)
        return
    assert problems
    assert all(isinstance(p, str) and p for p in problems)
    for secret in (CLIENT_SECRET, HMAC_KEY):
        assert secret not in text


# --- config.example.yaml -------------------------------------------------------------------

EXAMPLE_ENV = {
    "GINI_CLIENT_ID": "example-client",
    "GINI_CLIENT_SECRET": CLIENT_SECRET,
    "GINI_PROXY_STORE_KEY": STORE_KEY,
}


def example_copy(tmp_path: Path, example: Path = EXAMPLE) -> Path:
    """The example with its /var/run secret files moved into `tmp_path`, which holds them."""
    secrets_dir = tmp_path / "secrets"
    write(secrets_dir / "hmac-key", HMAC_KEY + "\n")
    write(secrets_dir / "inbound-keys", f"# one per line\n{INBOUND_KEY}\n")
    write(secrets_dir / "client-secret", CLIENT_SECRET + "\n")
    write(secrets_dir / "store-key", STORE_KEY + "\n")
    write(secrets_dir / "db-password", "db-password-0123\n")
    text = example.read_text(encoding="utf-8")
    assert "/var/run/secrets/gini-proxy/" in text
    return write(
        tmp_path / "config.yaml", text.replace("/var/run/secrets/gini-proxy", str(secrets_dir))
    )


def test_the_example_loads(tmp_path: Path) -> None:
    config = load_config(example_copy(tmp_path), EXAMPLE_ENV)
    assert config.client.id == "example-client"
    assert config.client.secret.value == CLIENT_SECRET
    assert config.identity.hmac_key.value == HMAC_KEY
    assert config.store is not None
    assert config.store.encryption_key.value == STORE_KEY
    assert config.inbound_auth is None  # a drop-in loopback sidecar needs no inbound keys
    assert config.listen.is_loopback  # a sidecar


def test_the_network_example_loads_with_inbound_auth(tmp_path: Path) -> None:
    config = load_config(example_copy(tmp_path, NETWORK_EXAMPLE), {"GINI_CLIENT_ID": "c"})
    assert not config.listen.is_loopback
    assert config.inbound_auth is not None
    assert [k.value for k in config.inbound_auth.keys] == [INBOUND_KEY]
    assert config.store is not None
    assert config.store.url.startswith("postgresql://")
    assert not config.allow_unauthenticated_network
    # Without its inbound keys, a network listener is refused.
    data = yaml.safe_load(example_copy(tmp_path, NETWORK_EXAMPLE).read_text(encoding="utf-8"))
    del data["inbound_auth"]
    assert has(problems_of(data, {"GINI_CLIENT_ID": "c"}), "listen", "no inbound_auth")


def commented_section(example: Path, name: str) -> dict[str, Any]:
    """A section the example shows as a `# name:` comment block, parsed."""
    lines = example.read_text(encoding="utf-8").splitlines()
    first = lines.index(f"# {name}:")
    block = [lines[first][2:]]
    for line in lines[first + 1 :]:
        if not line.startswith("#   "):
            break
        block.append(line[2:])
    section: dict[str, Any] = yaml.safe_load("\n".join(block))[name]
    return section


def test_the_example_documents_inbound_auth_in_a_comment() -> None:
    section = commented_section(EXAMPLE, "inbound_auth")
    assert set(section) == {f.name for f in dataclasses.fields(InboundAuthConfig)}


def test_the_example_needs_only_its_secrets(tmp_path: Path) -> None:
    # Unchanged and without its environment, the only problems are the missing secrets.
    text = EXAMPLE.read_text(encoding="utf-8")
    absent = str(tmp_path / "absent")  # whatever this machine has under /var/run
    copy = write(tmp_path / "config.yaml", text.replace("/var/run/secrets/gini-proxy", absent))
    with pytest.raises(ConfigError) as caught:
        load_config(copy, {})
    for problem in caught.value.problems:
        assert "environment variable" in problem or "cannot read file" in problem, problem
    paths = sorted(p.partition(":")[0] for p in caught.value.problems)
    assert paths == [
        "client.id",
        "client.secret",
        "identity.hmac_key",
        "store.encryption_key",
    ]


def _sections(config_cls: type[Any]) -> dict[str, type[Any]]:
    """Config's fields whose type is a nested config dataclass."""
    hints = {f.name: f.type for f in dataclasses.fields(config_cls)}
    found: dict[str, type[Any]] = {}
    for name, hint in hints.items():
        type_name = str(hint).split(" | ")[0]
        candidate = getattr(config_module, type_name, None)
        if dataclasses.is_dataclass(candidate) and candidate is not Address:
            assert isinstance(candidate, type)
            found[name] = candidate
    return found


def test_the_example_lists_every_key() -> None:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    # inbound_auth, jwt and fleet are there as comments (tests above, test_jwt_config.py and
    # test_fleet_config.py). source_file is where the config was read from, not a key.
    keys = {f.name for f in dataclasses.fields(Config)} - {"source_file"}
    assert set(data) | {"inbound_auth", "jwt", "tracing", "audit", "fleet"} == keys
    data["inbound_auth"] = {"header": "", "keys": ""}
    for commented in ("jwt", "tracing", "audit", "fleet"):
        data[commented] = commented_section(EXAMPLE, commented)
    sections = _sections(Config)
    assert set(sections) == {
        "upstream", "client", "identity", "anonymous", "store", "tokens", "inbound_auth",
        "response_cache", "logging", "client_timeouts", "jwt", "tracing", "audit", "fleet",
    }  # fmt: skip
    for name, section_cls in sections.items():
        assert set(data[name]) == {f.name for f in dataclasses.fields(section_cls)}, name
    for route in data["response_cache"]["routes"]:
        assert isinstance(route, str) or set(route) <= {"path", "shared"}


def test_the_example_shows_the_defaults(tmp_path: Path) -> None:
    example = load_config(example_copy(tmp_path), EXAMPLE_ENV)
    defaults = build_config(
        {
            "client": {"id": "example-client", "secret": CLIENT_SECRET},
            "identity": {"hmac_key": HMAC_KEY},
            "inbound_auth": {"keys": INBOUND_KEY},
            "response_cache": {},
        },
        {},
        tmp_path,
    )
    for name in (
        "listen", "admin_listen", "public_url", "upstream", "tokens", "shutdown_grace_seconds",
        "drain_delay_seconds", "max_body_bytes", "max_rewrite_bytes",
        "allow_unauthenticated_network", "logging",
    ):  # fmt: skip
        assert getattr(example, name) == getattr(defaults, name), name
    assert example.identity.header == defaults.identity.header
    assert example.response_cache is not None
    assert defaults.response_cache is not None
    assert dataclasses.replace(example.response_cache, routes=()) == defaults.response_cache
    assert all(not route.shared for route in example.response_cache.routes)


def test_the_docs_describe_every_key() -> None:
    docs = DOCS.read_text(encoding="utf-8")
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    for key, value in data.items():
        assert f"`{key}`" in docs, key
        if isinstance(value, dict):
            for inner in value:
                assert f"`{key}.{inner}`" in docs, f"{key}.{inner}"
    assert "`response_cache.routes[].shared`" in docs
    for text in ("openssl rand -hex 32", "openssl rand -base64 32", "GINI_PROXY_CONFIG"):
        assert text in docs


# --- the command line ----------------------------------------------------------------------


def good_config(folder: Path, hmac_key: str = HMAC_KEY) -> Path:
    write(folder / "hmac-key", hmac_key + "\n")
    return write(
        folder / "config.yaml",
        "client:\n  id: my-client\n  secret: {env: TEST_GINI_SECRET}\n"
        "identity:\n  hmac_key: {file: hmac-key}\n",
    )


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_GINI_SECRET", CLIENT_SECRET)
    monkeypatch.delenv("GINI_PROXY_CONFIG", raising=False)


@pytest.mark.usefixtures("cli_env")
def test_check_config_accepts_a_good_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = good_config(tmp_path)
    assert main(["check-config", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "valid" in out
    assert CLIENT_SECRET not in out + err
    assert HMAC_KEY not in out + err


@pytest.mark.usefixtures("cli_env")
def test_check_config_lists_every_problem_and_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    short_hmac = "short-hmac-value-xyz"
    bad_store_key = "definitely-not-a-32-byte-key"
    short_inbound = "tiny-inbound"
    write(tmp_path / "inbound", f"{INBOUND_KEY}\n{short_inbound}\n")
    path = write(
        tmp_path / "bad.yaml",
        "listen: 0.0.0.0:8080\n"
        "client:\n  id: my-client\n  secret: {env: TEST_GINI_SECRET}\n"
        f"identity:\n  hmac_key: {short_hmac}\n"
        "anonymous:\n  email_domain: example.com\n"
        f"store:\n  url: sqlite:////tmp/x.db\n  encryption_key: {bad_store_key}\n"
        "inbound_auth:\n  keys: {file: inbound}\n"
        "tokens:\n  max_cached: -1\n"
        "extra_key: 1\n",
    )
    assert main(["check-config", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    for path_text in (
        "public_url:",
        "identity.hmac_key:",
        "store.encryption_key:",
        "inbound_auth.keys:",
        "tokens.max_cached:",
        "extra_key:",
    ):
        assert path_text in err, path_text
    for secret in (CLIENT_SECRET, short_hmac, bad_store_key, short_inbound, INBOUND_KEY):
        assert secret not in out + err


@pytest.mark.usefixtures("cli_env")
def test_check_config_on_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


@pytest.mark.usefixtures("cli_env")
def test_hash_user_prints_the_identifier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = good_config(tmp_path)
    for user_id in ("alice", "Jürgen Müller", "x" * 256):
        assert main(["hash-user", user_id, "--config", str(path)]) == 0
        out = capsys.readouterr().out
        expected = hmac.new(HMAC_KEY.encode(), user_id.encode("utf-8"), hashlib.sha256)
        assert out == expected.hexdigest() + "\n"
        assert re.fullmatch(r"[0-9a-f]{64}\n", out)


@pytest.mark.usefixtures("cli_env")
@pytest.mark.parametrize("user_id", ["", "x" * 257, "bad\tid", "nul\x00", " padded"])
def test_hash_user_refuses_invalid_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], user_id: str
) -> None:
    path = good_config(tmp_path)
    assert main(["hash-user", user_id, "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "error" in err


@pytest.mark.usefixtures("cli_env")
def test_hash_user_without_a_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-user", "alice", "--config", str(tmp_path / "missing.yaml")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "missing.yaml" in err


@pytest.mark.usefixtures("cli_env")
def test_cli_config_search_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = {name: f"{name}-key-0123456789abcdef0123456789" for name in ("flag", "env", "cwd")}
    paths = {name: good_config(tmp_path / name, key) for name, key in keys.items()}

    def hashed_with() -> str:
        assert main(["hash-user", "alice", *argv]) == 0
        out = capsys.readouterr().out.strip()
        for name, key in keys.items():
            if out == hmac.new(key.encode(), b"alice", hashlib.sha256).hexdigest():
                return name
        raise AssertionError(out)

    monkeypatch.chdir(tmp_path / "cwd")
    argv: list[str] = []
    assert hashed_with() == "cwd"  # ./config.yaml
    monkeypatch.setenv("GINI_PROXY_CONFIG", str(paths["env"]))
    assert hashed_with() == "env"  # $GINI_PROXY_CONFIG beats ./config.yaml
    argv = ["--config", str(paths["flag"])]
    assert hashed_with() == "flag"  # --config beats both
    # The same order for check-config: with nothing in the folder and no variable, it fails.
    monkeypatch.delenv("GINI_PROXY_CONFIG")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert main(["check-config"]) == 2
    assert "config.yaml" in capsys.readouterr().err
    monkeypatch.setenv("GINI_PROXY_CONFIG", str(paths["env"]))
    assert main(["check-config"]) == 0
    assert str(paths["env"]) in capsys.readouterr().out


def test_example_passes_check_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)
    copy = example_copy(tmp_path)
    assert main(["check-config", "--config", str(copy)]) == 0
    assert "valid" in capsys.readouterr().out


def test_store_password_is_a_secret_for_postgres_only(tmp_path: Path) -> None:
    (tmp_path / "db-password").write_text("s3cret-db-password\n")
    base = {
        "client": {"id": "c", "secret": "client-secret-value"},
        "identity": {"hmac_key": "k" * 32},
    }
    key = base64.b64encode(b"e" * 32).decode()
    store = {
        "url": "postgresql://proxy@db/gini",
        "encryption_key": key,
        "password": {"file": "db-password"},
    }
    config = build_config({**base, "store": store}, {}, tmp_path)
    assert config.store is not None
    assert config.store.password is not None
    assert config.store.password.value == "s3cret-db-password"
    assert "s3cret-db-password" in config.secrets()
    with pytest.raises(ConfigError) as raised:
        build_config({**base, "store": {**store, "url": "sqlite:////tmp/x.db"}}, {}, tmp_path)
    assert any(p.startswith("store.password:") for p in raised.value.problems)


# --- identity.key_id and store.previous_encryption_keys -------------------------------------


def test_previous_encryption_keys_are_secrets_like_the_current_key(tmp_path: Path) -> None:
    old = base64.b64encode(b"o" * 32).decode()
    older = base64.b64encode(b"p" * 32).decode()
    write(tmp_path / "old-key", old + "\n")
    store = {
        "url": "sqlite:////tmp/x.db",
        "encryption_key": STORE_KEY,
        "previous_encryption_keys": [{"file": "old-key"}, {"env": "OLDER_KEY"}],
    }
    config = build_config(with_(MINIMAL, store=store), {"OLDER_KEY": older}, tmp_path)
    assert config.store is not None
    assert config.store.previous_key_bytes == (b"o" * 32, b"p" * 32)
    assert [key.source for key in config.store.previous_encryption_keys] == [
        f"file:{tmp_path / 'old-key'}",
        "env:OLDER_KEY",
    ]
    assert {old, older} <= set(config.secrets())  # the log redactor hides them too
    assert old not in repr(config)


def test_bad_previous_encryption_keys_are_each_reported(tmp_path: Path) -> None:
    store = {
        "url": "sqlite:////tmp/x.db",
        "encryption_key": STORE_KEY,
        "previous_encryption_keys": ["not-a-key", STORE_KEY, {"env": "MISSING"}],
    }
    problems = problems_of(with_(MINIMAL, store=store))
    assert has(problems, "store.previous_encryption_keys[0]", "32 bytes in base64")
    assert has(problems, "store.previous_encryption_keys[1]", "same key as store.encryption_key")
    assert has(problems, "store.previous_encryption_keys[2]", "MISSING")
    assert "not-a-key" not in " ".join(problems)
    not_a_list = {**store, "previous_encryption_keys": STORE_KEY}
    problems = problems_of(with_(MINIMAL, store=not_a_list))
    assert has(problems, "store.previous_encryption_keys", "list")


def test_identity_key_id_is_optional() -> None:
    assert build(MINIMAL).identity.key_id is None
