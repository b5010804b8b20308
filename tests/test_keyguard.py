"""The identity key guard: `identity_key_id` in /status and metrics, recorded in the store,
pinned by `identity.key_id`, and a start with another `identity.hmac_key` refused (exit 3)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.config import build_config
from proxy.config.reader import ConfigError
from proxy.errors import InvalidUser
from proxy.identity import KEY_ID_LABEL, derive_identifier, identity_key_id, validate_user_id
from proxy.sandbox import GiniSimulator
from proxy.vending.keyguard import IdentityKeyChanged, check_store

from .conftest import HMAC_KEY, USER, StartProxy, config_data, merge
from .stores_support import PostgresBackend, backend_for
from .test_server import ProxyProcess, free_port, spawn

OTHER_HMAC_KEY = "another-hmac-key-for-tests-fedcba9876543210"
KEY_ID = identity_key_id(HMAC_KEY.encode())
OTHER_KEY_ID = identity_key_id(OTHER_HMAC_KEY.encode())


# --- the fingerprint ------------------------------------------------------------------------


def test_the_key_id_is_16_hex_digits_that_depend_on_the_key() -> None:
    assert len(KEY_ID) == 16
    assert int(KEY_ID, 16) >= 0
    assert KEY_ID.lower() == KEY_ID
    assert KEY_ID != OTHER_KEY_ID
    assert identity_key_id(HMAC_KEY.encode()) == KEY_ID  # stable across calls and processes
    assert HMAC_KEY not in KEY_ID


def test_the_key_id_label_is_no_valid_user_id() -> None:
    """No caller can make the proxy derive (and send Gini) the value the key id is cut from."""
    with pytest.raises(InvalidUser):
        validate_user_id(KEY_ID_LABEL.decode())
    assert derive_identifier(HMAC_KEY.encode(), KEY_ID_LABEL.decode())[:16] == KEY_ID


@pytest.mark.parametrize("value", ["abc", "g" * 16, "0123456789abcdef0", 1234567890123456])
def test_a_malformed_key_id_pin_is_a_config_problem(value: object, tmp_path: Path) -> None:
    identity: dict[str, object] = {"hmac_key": HMAC_KEY, "key_id": value}
    data = {"client": {"id": "c", "secret": "s"}, "identity": identity}
    with pytest.raises(ConfigError, match=r"identity\.key_id"):
        build_config(data, {}, tmp_path)


def test_a_key_id_pin_is_read_case_insensitively(tmp_path: Path) -> None:
    data = {"client": {"id": "c", "secret": "s"}, "identity": {"hmac_key": HMAC_KEY}}
    data["identity"]["key_id"] = KEY_ID.upper()
    assert build_config(data, {}, tmp_path).identity.key_id == KEY_ID


# --- a running proxy ------------------------------------------------------------------------


async def test_status_and_metrics_show_the_key_id_never_the_key(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = await start_proxy()
    async with proxy.client.post(proxy.url + "/_proxy/tokens/anonymous", headers=USER) as r:
        assert r.status == 200
    async with proxy.client.get(proxy.admin_url + "/status") as response:
        status_text = await response.text()
    async with proxy.client.get(proxy.admin_url + "/metrics") as response:
        metrics_text = await response.text()

    assert f'"identity_key_id": "{KEY_ID}"' in status_text
    assert f'identity_key_id="{KEY_ID}"' in metrics_text
    full = derive_identifier(HMAC_KEY.encode(), KEY_ID_LABEL.decode())
    for text in (status_text, metrics_text, caplog.text):
        assert HMAC_KEY not in text
        assert HMAC_KEY.encode().hex() not in text
        assert full not in text  # only the truncated fingerprint is ever shown


async def test_the_first_start_records_the_key_id_in_the_store(start_proxy: StartProxy) -> None:
    proxy = await start_proxy()
    store = proxy.services.store
    assert store is not None
    assert await store.get_meta("identity_key_id") == KEY_ID.encode()


async def test_a_start_with_another_key_on_the_same_store_is_refused(
    start_proxy: StartProxy,
) -> None:
    await start_proxy()
    with pytest.raises(IdentityKeyChanged) as caught:
        await start_proxy(identity={"hmac_key": OTHER_HMAC_KEY})
    message = str(caught.value)
    assert "identity.hmac_key" in message
    assert "new, empty Gini user" in message
    assert KEY_ID in message
    assert OTHER_KEY_ID in message
    assert HMAC_KEY not in message
    assert OTHER_HMAC_KEY not in message
    await start_proxy()  # the recorded key still starts


async def test_a_key_id_pin_without_store_refuses_another_key(start_proxy: StartProxy) -> None:
    no_store: dict[str, Any] = {"anonymous": None, "store": None}
    with pytest.raises(IdentityKeyChanged, match=r"identity\.key_id"):
        await start_proxy(**no_store, identity={"hmac_key": OTHER_HMAC_KEY, "key_id": KEY_ID})
    proxy = await start_proxy(**no_store, identity={"key_id": KEY_ID})
    async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
        assert response.status == 200


@pytest.mark.postgres
@pytest.mark.parametrize("same_key", [True, False])
async def test_replicas_starting_together_on_postgres_agree(tmp_path: Path, same_key: bool) -> None:
    async with backend_for("postgres", tmp_path) as backend:
        assert isinstance(backend, PostgresBackend)
        stores = [backend.new_store() for _ in range(6)]
        await asyncio.gather(*(store.open() for store in stores))
        try:
            key_ids = [KEY_ID if same_key or n % 2 else OTHER_KEY_ID for n in range(6)]
            results = await asyncio.gather(
                *(check_store(s, k) for s, k in zip(stores, key_ids, strict=True)),
                return_exceptions=True,
            )
        finally:
            for store in stores:
                await store.close()
        recorded = (await backend.meta("identity_key_id") or b"").decode()
        assert recorded in (KEY_ID, OTHER_KEY_ID)
        for key_id, result in zip(key_ids, results, strict=True):
            if key_id == recorded:
                assert result is None
            else:
                assert isinstance(result, IdentityKeyChanged)
        assert same_key is all(result is None for result in results)


# --- the real process -----------------------------------------------------------------------


def write_config(sim: GiniSimulator, tmp_path: Path, name: str, **overrides: Any) -> Path:
    data = merge(
        config_data(sim, tmp_path),
        {"listen": f"127.0.0.1:{free_port()}", "admin_listen": f"127.0.0.1:{free_port()}"},
    )
    data = merge(data, overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def stop(proc: ProxyProcess) -> None:
    proc.process.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0


@pytest.mark.slow
async def test_a_changed_hmac_key_exits_3_and_says_why(sim: GiniSimulator, tmp_path: Path) -> None:
    first = write_config(sim, tmp_path, "first")
    proc = await spawn("serve", "--config", str(first))
    await proc.wait_for(rb"gini-auth-proxy ready")
    listen = yaml.safe_load(first.read_text())["listen"]
    async with (
        aiohttp.ClientSession() as client,
        client.post(f"http://{listen}/_proxy/tokens/anonymous", headers=USER) as response,
    ):
        assert response.status == 200
    await stop(proc)

    changed = write_config(sim, tmp_path, "changed", identity={"hmac_key": OTHER_HMAC_KEY})
    refused = await spawn("serve", "--config", str(changed))
    assert await refused.finish() == 3
    output = refused.output.decode()
    assert "identity.hmac_key" in output
    assert "new, empty Gini user" in output
    assert "unreachable" in output
    assert f"key id {OTHER_KEY_ID}" in output
    assert f"key id {KEY_ID}" in output
    assert HMAC_KEY not in output
    assert OTHER_HMAC_KEY not in output
    assert "Traceback" not in output

    again = await spawn("serve", "--config", str(first))
    await again.wait_for(rb"gini-auth-proxy ready")
    await stop(again)
    assert sim.state.users_created == 1


@pytest.mark.slow
async def test_a_key_id_pin_without_store_exits_3(sim: GiniSimulator, tmp_path: Path) -> None:
    pinned = {"hmac_key": OTHER_HMAC_KEY, "key_id": KEY_ID}
    path = write_config(sim, tmp_path, "pinned", anonymous=None, store=None, identity=pinned)
    proc = await spawn("serve", "--config", str(path))
    assert await proc.finish() == 3
    assert b"identity.key_id" in proc.output
    assert b"identity.hmac_key" in proc.output
    assert OTHER_HMAC_KEY.encode() not in proc.output

    check = await spawn("check-config", "--config", str(path))  # well-formed: exit 0
    assert await check.finish() == 0


@pytest.mark.slow
async def test_hash_user_key_id_prints_the_fingerprint(sim: GiniSimulator, tmp_path: Path) -> None:
    path = write_config(sim, tmp_path, "config")
    proc = await spawn("hash-user", "--key-id", "--config", str(path))
    assert await proc.finish() == 0
    assert proc.output.decode().strip() == KEY_ID

    identifier = await spawn("hash-user", "alice", "--config", str(path))
    assert await identifier.finish() == 0
    assert identifier.output.decode().strip() == derive_identifier(HMAC_KEY.encode(), "alice")

    for args in (("hash-user", "alice", "--key-id"), ("hash-user",)):
        refused = await spawn(*args, "--config", str(path))
        assert await refused.finish() == 2
        assert b"either an ID or --key-id" in refused.output
