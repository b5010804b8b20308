"""The `starting` record: one log line that says what the process runs, and no secret."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy import __version__
from proxy.app import Services
from proxy.config import build_config
from proxy.config.summary import origin, startup_summary
from proxy.identity import identity_key_id
from proxy.log import JsonFormatter, Redactor
from proxy.sandbox import GiniSimulator
from proxy.server import run

from .conftest import CLIENT_SECRET, HMAC_KEY, STORE_KEY, config_data, merge

STORE_PASSWORD = "planted-store-pass-91b"
EGRESS_PASSWORD = "planted-egress-pass-3c2"
CACHE_PASSWORD = "planted-cache-pass-d07"
INBOUND_KEY = "planted-inbound-key-5e6f7a8b9c"
PATH_TOKEN = "planted-path-token-a1"


def planted(sim: GiniSimulator, tmp_path: Path) -> dict[str, Any]:
    """A config holding a secret in every place one can be."""
    return merge(
        config_data(sim, tmp_path),
        {
            "upstream": {
                "pay_api": sim.pay_api_url + f"/{PATH_TOKEN}",
                "egress_proxy": {
                    "url": "http://egress.internal:3128",
                    "username": "svc",
                    "password": EGRESS_PASSWORD,
                },
            },
            "store": {
                "url": f"postgresql://gini:{STORE_PASSWORD}@db.internal:6432/gini_proxy",
            },
            "inbound_auth": {"keys": INBOUND_KEY},
            "response_cache": {
                "routes": ["/paymentProviders"],
                "backend": f"redis://:{CACHE_PASSWORD}@cache.internal:6380/2",
            },
        },
    )


def test_the_summary_names_everything_and_holds_no_secret(
    sim: GiniSimulator, tmp_path: Path
) -> None:
    config = build_config(planted(sim, tmp_path), {}, tmp_path)
    key_id = identity_key_id(HMAC_KEY.encode())
    summary = startup_summary(config, "9.9.9", key_id)
    pay_api = origin(sim.pay_api_url)
    assert summary == {
        "version": "9.9.9",
        "config_file": None,
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:1",
        "public_url": "http://proxy.test:8080",
        "upstreams": {"pay_api": pay_api, "user_center": origin(sim.user_center_url)},
        "egress_proxy": "egress.internal:3128",
        "auth_mode": "basic",
        "store": {"kind": "postgresql", "address": "db.internal:6432", "database": "gini_proxy"},
        "response_cache": {"kind": "redis", "address": "redis://cache.internal:6380"},
        "features": ["anonymous_users", "inbound_auth", "response_cache"],
        "identity_key_id": key_id,
    }
    text = json.dumps(summary)
    secrets = [*config.secrets(), CLIENT_SECRET, HMAC_KEY, STORE_KEY, STORE_PASSWORD]
    secrets += [EGRESS_PASSWORD, CACHE_PASSWORD, INBOUND_KEY, PATH_TOKEN, "svc"]
    assert [s for s in secrets if s in text] == []


def test_a_sidecar_without_store_or_cache(sim: GiniSimulator, tmp_path: Path) -> None:
    data = merge(config_data(sim, tmp_path), {"anonymous": None, "store": None})
    config = build_config(data, {}, tmp_path)
    summary = startup_summary(config, __version__, "k")
    assert (summary["store"], summary["response_cache"], summary["features"]) == (None, None, [])
    assert summary["egress_proxy"] is None


@given(
    st.sampled_from(["http", "https"]),
    st.from_regex(r"[a-z0-9.-]{1,20}", fullmatch=True),
    st.one_of(st.none(), st.integers(1, 65535)),
    st.text(st.characters(codec="ascii", exclude_characters="#?/@[]"), max_size=20),
    st.text(st.characters(codec="ascii"), max_size=20),
)
def test_origin_keeps_only_scheme_host_and_port(
    scheme: str, host: str, port: int | None, user: str, rest: str
) -> None:
    userinfo = f"{user}:pw-1@" if user else ""
    netloc = f"{userinfo}{host}" + (f":{port}" if port else "")
    result = origin(f"{scheme}://{netloc}/{rest}")
    default = 443 if scheme == "https" else 80
    assert result == f"{scheme}://{host}:{port or default}"


async def test_serve_logs_one_starting_record_first(
    sim: GiniSimulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        admin = probe.getsockname()[1]
    path = tmp_path / "config.yaml"
    data = merge(config_data(sim, tmp_path), {"admin_listen": f"127.0.0.1:{admin}"})
    config = dataclasses.replace(build_config(data, os.environ, tmp_path), source_file=path)
    caplog.set_level(logging.INFO)
    assert await run(Services(config), on_ready=lambda: os.kill(os.getpid(), signal.SIGTERM)) == 0
    records = [r for r in caplog.records if r.name == "proxy.server"]
    assert records[0].getMessage() == "starting"
    assert [r.getMessage() for r in records].count("starting") == 1
    line = json.loads(JsonFormatter(Redactor()).format(records[0]))
    assert line["version"] == __version__
    assert line["identity_key_id"] == identity_key_id(HMAC_KEY.encode())
    assert line["config_file"] == str(path)
    assert line["admin_listen"] == f"127.0.0.1:{admin}"
    assert line["store"] == {"kind": "sqlite", "path": f"{tmp_path}/store.db"}
    assert CLIENT_SECRET not in json.dumps(line)
