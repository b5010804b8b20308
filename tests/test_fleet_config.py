"""The `fleet` section: defaults, every problem at once, secret sources, and a proxy without
it that loads no Redis client."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.config import build_config
from proxy.config.reader import ConfigError

from .conftest import HMAC_KEY
from .test_config import EXAMPLE, commented_section

BASE: dict[str, Any] = {"client": {"id": "c", "secret": "s"}, "identity": {"hmac_key": HMAC_KEY}}


def problems(fleet: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config({**BASE, "fleet": fleet}, env or {}, Path("."))
    return caught.value.problems


def test_without_the_section_there_is_no_fleet() -> None:
    assert build_config(BASE, {}, Path(".")).fleet is None


def test_defaults() -> None:
    config = build_config({**BASE, "fleet": {"redis_url": "redis://r:6379/2"}}, {}, Path("."))
    fleet = config.fleet
    assert fleet is not None
    assert fleet.redis_url.value == "redis://r:6379/2"
    assert (fleet.password, fleet.cluster, fleet.key_prefix) == (None, False, "gini-auth-proxy:")
    assert (fleet.lock_seconds, fleet.call_timeout_seconds) == (10, 0.25)


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        {
            "redis_url": "http://r:6379",
            "cluster": "maybe",
            "key_prefix": "has space",
            "lock_seconds": 0,
            "call_timeout_seconds": "slow",
            "extra": 1,
        }
    )
    paths = sorted(p.partition(":")[0] for p in found)
    assert paths == [
        "fleet.call_timeout_seconds",
        "fleet.cluster",
        "fleet.extra",
        "fleet.key_prefix",
        "fleet.lock_seconds",
        "fleet.redis_url",
    ]


def test_a_redis_url_is_required_and_never_echoed() -> None:
    assert any(p.startswith("fleet.redis_url") for p in problems({}))
    found = problems({"redis_url": "memcached://user:hunter2secret@r:1"})
    assert found
    assert all("hunter2secret" not in p for p in found)


def test_a_timeout_must_leave_room_to_renew_a_lease() -> None:
    found = problems({"redis_url": "redis://r", "lock_seconds": 1, "call_timeout_seconds": 0.9})
    assert [p.partition(":")[0] for p in found] == ["fleet.call_timeout_seconds"]


def test_url_and_password_come_from_secret_sources(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("redis-password-123\n")
    config = build_config(
        {
            **BASE,
            "fleet": {
                "redis_url": {"env": "FLEET_URL"},
                "password": {"file": str(tmp_path / "pw")},
                "cluster": True,
            },
        },
        {"FLEET_URL": "rediss://:inline-pass-456@r:6380/0"},
        tmp_path,
    )
    assert config.fleet is not None
    assert config.fleet.cluster
    assert config.fleet.password is not None
    assert config.fleet.password.path == tmp_path / "pw"  # reloadable: read from a file
    # The redactor learns both passwords, and the URL never shows in a repr.
    assert {"redis-password-123", "inline-pass-456"} <= set(config.secrets())
    assert "inline-pass-456" not in repr(config)


def test_the_examples_fleet_block_loads_when_uncommented() -> None:
    section = commented_section(EXAMPLE, "fleet")
    section.pop("password")  # a file on the deployment's machine
    config = build_config({**BASE, "fleet": section}, {}, Path("."))
    assert config.fleet is not None
    assert config.fleet.lock_seconds == 10


def test_a_proxy_without_fleet_loads_no_redis_client(tmp_path: Path) -> None:
    code = (
        "import sys, os; from pathlib import Path;"
        "from proxy.config import build_config; from proxy.app import Services;"
        "import proxy.server, proxy.admin, proxy.cli;"
        f"Services(build_config({BASE!r}, os.environ, Path('.')));"
        "print(sorted(m for m in ('redis', 'proxy.vending.fleet.remote') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ},
    )
    assert done.stdout.strip() == "[]"
