"""Store key rotation as operators run it: real `serve` and `rotate-store-key` processes.

A new `store.encryption_key` with the old one in `previous_encryption_keys` keeps every stored
user logging in (no new Gini user), `rotate-store-key` moves every row to the new key (also
while a proxy serves), and afterwards the new key alone starts and serves.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.identity import derive_identifier
from proxy.sandbox import GiniSimulator
from proxy.vending.stores.cipher import Cipher
from proxy.vending.stores.postgres import PostgresStore

from .conftest import HMAC_KEY, config_data, merge
from .stores_support import PostgresBackend, opened, postgres_schema
from .test_server import ProxyProcess, free_port, spawn

pytestmark = pytest.mark.slow

RAW_1, RAW_2, RAW_3 = b"1" * 32, b"2" * 32, b"3" * 32
KEY_1, KEY_2, KEY_3 = (base64.b64encode(raw).decode() for raw in (RAW_1, RAW_2, RAW_3))
ANONYMOUS = "/_proxy/tokens/anonymous"


class Deployment:
    """Config files for one store, each with its own store keys, and the processes serving."""

    def __init__(self, sim: GiniSimulator, tmp_path: Path, store_url: str | None = None):
        self.sim = sim
        self.tmp_path = tmp_path
        self.store_url = store_url or f"sqlite:///{tmp_path}/store.db"
        self.written = 0
        self.listen: dict[Path, str] = {}

    def config(self, key: str, *previous: str, **overrides: Any) -> Path:
        store = {"url": self.store_url, "encryption_key": key}
        if previous:
            store["previous_encryption_keys"] = list(previous)  # type: ignore[assignment]
        data = merge(
            config_data(self.sim, self.tmp_path),
            {
                "listen": f"127.0.0.1:{free_port()}",
                "admin_listen": f"127.0.0.1:{free_port()}",
                "store": store,
                **overrides,
            },
        )
        self.written += 1
        path = self.tmp_path / f"config-{self.written}.yaml"
        path.write_text(yaml.safe_dump(data))
        self.listen[path] = data["listen"]
        return path

    async def serve(self, config: Path) -> tuple[ProxyProcess, str]:
        proc = await spawn("serve", "--config", str(config))
        await proc.wait_for(rb"gini-auth-proxy ready")
        return proc, f"http://{self.listen[config]}"


async def stop(proc: ProxyProcess) -> None:
    proc.process.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0, proc.output.decode()


async def log_in(client: aiohttp.ClientSession, url: str, user: str) -> int:
    async with client.post(url + ANONYMOUS, headers={"X-User-Id": user}) as response:
        await response.read()
        return response.status


async def rotate(config: Path) -> tuple[int, str]:
    proc = await spawn("rotate-store-key", "--config", str(config))
    code = await proc.finish(timeout=60)
    return code, proc.output.decode()


async def test_a_new_key_with_the_old_one_previous_then_rotated_keeps_every_user(
    sim: GiniSimulator, tmp_path: Path
) -> None:
    deployment = Deployment(sim, tmp_path)
    users = [f"user-{n}" for n in range(6)]
    async with aiohttp.ClientSession() as client:
        proc, url = await deployment.serve(deployment.config(KEY_1))
        assert [await log_in(client, url, user) for user in users] == [200] * 6
        await stop(proc)
        assert sim.state.users_created == 6

        keyring = deployment.config(KEY_2, KEY_1)
        proc, url = await deployment.serve(keyring)
        assert [await log_in(client, url, user) for user in users[:3]] == [200] * 3
        await stop(proc)
        assert sim.state.users_created == 6  # stored users logged in: nobody new at Gini

        code, output = await rotate(keyring)
        assert code == 0, output
        assert "re-encrypted 3 stored credentials" in output
        assert "3 were already current" in output
        for secret in (KEY_1, KEY_2, HMAC_KEY):
            assert secret not in output

        proc, url = await deployment.serve(deployment.config(KEY_2))
        assert [await log_in(client, url, user) for user in users] == [200] * 6
        await stop(proc)
    assert sim.state.users_created == 6

    old_only = await spawn("serve", "--config", str(deployment.config(KEY_1)))
    assert await old_only.finish() == 3
    assert b"encryption_key" in old_only.output
    assert KEY_1.encode() not in old_only.output


async def test_dropping_the_old_key_before_rotating_exits_3(
    sim: GiniSimulator, tmp_path: Path
) -> None:
    deployment = Deployment(sim, tmp_path)
    async with aiohttp.ClientSession() as client:
        proc, url = await deployment.serve(deployment.config(KEY_1))
        assert await log_in(client, url, "alice") == 200
        await stop(proc)
    refused = await spawn("serve", "--config", str(deployment.config(KEY_2)))
    assert await refused.finish() == 3
    assert b"previous_encryption_keys" in refused.output


async def test_rotate_store_key_leaves_rows_no_key_decrypts_and_exits_3(
    sim: GiniSimulator, tmp_path: Path
) -> None:
    deployment = Deployment(sim, tmp_path)
    async with aiohttp.ClientSession() as client:
        proc, url = await deployment.serve(deployment.config(KEY_1))
        assert [await log_in(client, url, f"user-{n}") for n in range(3)] == [200] * 3
        await stop(proc)
    key = derive_identifier(HMAC_KEY.encode(), "user-1")
    path = tmp_path / "store.db"
    with closing(sqlite3.connect(path)) as db:
        (email,) = db.execute(
            "SELECT email FROM anonymous_users WHERE user_key = ?", (key,)
        ).fetchone()
        lost = Cipher(RAW_3).seal_password(key, email, "a password sealed with a lost key")
        db.execute("UPDATE anonymous_users SET password = ? WHERE user_key = ?", (lost, key))
        db.commit()

    code, output = await rotate(deployment.config(KEY_2, KEY_1))
    assert code == 3
    assert "re-encrypted 2 stored credentials" in output
    assert "1 stored credentials cannot be decrypted" in output
    with closing(sqlite3.connect(path)) as db:
        ((sealed,),) = db.execute("SELECT password FROM anonymous_users WHERE user_key = ?", (key,))
        (count,) = db.execute("SELECT count(*) FROM anonymous_users").fetchone()
    assert sealed == lost
    assert count == 3


async def test_rotate_store_key_exit_codes_for_config_and_outages(
    sim: GiniSimulator, tmp_path: Path
) -> None:
    deployment = Deployment(sim, tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("store: {url: sqlite:////x.db, encryption_key: short}\n")
    assert (await rotate(bad))[0] == 2
    no_store = deployment.config(KEY_1, anonymous=None, store=None)
    code, output = await rotate(no_store)
    assert (code, "no credential store" in output) == (2, True)
    bad_previous = deployment.config(KEY_2, "not-a-key")
    code, output = await rotate(bad_previous)
    assert code == 2
    assert "previous_encryption_keys[0]" in output

    unreachable = Deployment(sim, tmp_path, "postgresql://postgres@127.0.0.1:1/test")
    code, output = await rotate(unreachable.config(KEY_2, KEY_1))
    assert code == 3
    assert "cannot open PostgreSQL store" in output


@pytest.mark.postgres
async def test_rotate_store_key_while_a_proxy_serves_loses_and_duplicates_nothing(
    sim: GiniSimulator, tmp_path: Path
) -> None:
    existing = [f"user-{n}" for n in range(300)]
    new = [f"new-{n}" for n in range(100)]
    async with postgres_schema() as dsn:
        # 300 users stored under the old key (and known to Gini), written straight to the store.
        async with opened(PostgresStore(dsn, Cipher(RAW_1))) as seed:
            for n, user in enumerate(existing):
                key = derive_identifier(HMAC_KEY.encode(), user)
                email, password = f"{n:08d}@anon.example.com", f"password-{n}"
                await seed.claim(key, email, password)
                await seed.activate(key, email)
                sim.state.add_user(email, password)
        deployment = Deployment(sim, tmp_path, dsn)
        keyring = deployment.config(KEY_2, KEY_1)
        proc, url = await deployment.serve(keyring)
        sim.state.user_center_delay = 0.02  # keep the traffic going while the rotation runs
        order = [user for pair in zip(existing[::3], new, strict=False) for user in pair]
        order += [user for user in existing if user not in order]
        statuses: list[int] = []
        warmed_up = asyncio.Event()

        async with aiohttp.ClientSession() as client:

            async def traffic(users: list[str]) -> None:
                for user in users:
                    statuses.append(await log_in(client, url, user))
                    if len(statuses) >= 40:
                        warmed_up.set()

            load = [asyncio.create_task(traffic(order[n::4])) for n in range(4)]
            await warmed_up.wait()
            code, output = await rotate(keyring)
            overlapped = len(statuses) < len(order)
            await asyncio.gather(*load)
            await stop(proc)

            assert code == 0, output
            assert "re-encrypted 0 " not in output
            assert overlapped, "the rotation finished before the traffic started"
            assert statuses == [200] * len(order)
            assert sim.state.users_created == len(new)

            sim.state.user_center_delay = 0
            proc, url = await deployment.serve(deployment.config(KEY_2))
            again = await asyncio.gather(*(log_in(client, url, u) for u in existing + new))
            assert again == [200] * len(order)
            await stop(proc)
        rows = await PostgresBackend(dsn).fetch(
            "SELECT count(*), count(DISTINCT email) FROM anonymous_users"
        )
        assert rows == [(len(order), len(order))]
    assert sim.state.users_created == len(new)
    assert len(sim.state.user_emails()) == len(existing) + len(new)
