"""`gini-auth-proxy init`: the files it writes, their modes, the refusal to overwrite, and the
whole first run (init, check-config, serve) against the simulator in subprocesses."""

from __future__ import annotations

import asyncio
import os
import re
import stat
import sys
from pathlib import Path

import aiohttp
import pytest

from proxy import exitcodes
from proxy.cli import main
from proxy.commands.init import DEFAULT_DIR
from proxy.config import load_config
from proxy.identity import derive_identifier

from .test_server import ProxyProcess, free_port

ENV = {"GINI_CLIENT_ID": "sim-client", "GINI_CLIENT_SECRET": "sim-secret"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_config_and_private_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "proxy"
    assert main(["init", str(folder)]) == exitcodes.OK
    out = capsys.readouterr().out
    assert mode(folder / "secrets") == 0o700
    assert mode(folder / "data") == 0o700
    assert mode(folder / "secrets" / "hmac-key") == 0o600
    assert mode(folder / "secrets" / "store-key") == 0o600
    # Next steps: the two variables, then the three commands with the real path.
    config = folder / "config.yaml"
    assert "export GINI_CLIENT_ID=" in out
    assert "export GINI_CLIENT_SECRET=" in out
    for command in ("check-config", "doctor", "serve"):
        assert f"gini-auth-proxy {command} --config {config}" in out
    # Neither key is ever printed.
    for key in ("hmac-key", "store-key"):
        assert (folder / "secrets" / key).read_text().strip() not in out


def test_generated_config_is_valid_once_the_variables_are_set(tmp_path: Path) -> None:
    folder = tmp_path / "proxy"
    assert main(["init", str(folder), "--pay-api", "http://127.0.0.1:1/"]) == exitcodes.OK
    config = load_config(folder / "config.yaml", ENV)
    assert config.client.id == "sim-client"
    assert config.client.secret.value == "sim-secret"
    assert config.upstream.pay_api == "http://127.0.0.1:1"
    assert config.upstream.user_center == "https://user.gini.net"
    assert config.listen.is_loopback
    assert config.admin_listen.is_loopback
    assert config.store is not None
    # The store lives in DIR/data by absolute path (a relative one is refused by check-config).
    assert config.store.url == f"sqlite:///{(folder / 'data' / 'store.db').resolve()}"
    assert len(config.store.key_bytes) == 32
    assert config.identity.hmac_key.source == f"file:{folder / 'secrets' / 'hmac-key'}"
    assert len(config.identity.hmac_key.encode()) >= 32


def test_each_run_generates_new_keys(tmp_path: Path) -> None:
    keys = set()
    for name in ("a", "b"):
        assert main(["init", str(tmp_path / name)]) == exitcodes.OK
        keys.add((tmp_path / name / "secrets" / "hmac-key").read_text())
        keys.add((tmp_path / name / "secrets" / "store-key").read_text())
    assert len(keys) == 4


def test_without_variables_check_config_names_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "proxy"
    main(["init", str(folder)])
    capsys.readouterr()
    assert main(["check-config", "--config", str(folder / "config.yaml")]) == exitcodes.CONFIG
    err = capsys.readouterr().err
    assert "GINI_CLIENT_ID is not set" in err
    assert "GINI_CLIENT_SECRET is not set" in err
    assert "is empty" not in err  # one problem per unset variable, not two
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["check-config", "--config", str(folder / "config.yaml")]) == exitcodes.OK


@pytest.mark.parametrize("existing", ["config.yaml", "secrets/hmac-key", "secrets/store-key"])
def test_init_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], existing: str
) -> None:
    folder = tmp_path / "proxy"
    (folder / existing).parent.mkdir(parents=True)
    (folder / existing).write_text("mine\n")
    assert main(["init", str(folder)]) == exitcodes.CONFIG
    err = capsys.readouterr().err
    assert str(folder / existing) in err
    assert "--force" in err
    assert (folder / existing).read_text() == "mine\n"
    # Nothing else was written either: a half-initialised folder would be worse.
    assert [p for p in folder.rglob("*") if p.is_file()] == [folder / existing]


def test_force_replaces_everything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "proxy"
    assert main(["init", str(folder)]) == exitcodes.OK
    old = (folder / "secrets" / "hmac-key").read_text()
    (folder / "secrets" / "hmac-key").chmod(0o644)
    assert main(["init", str(folder), "--force"]) == exitcodes.OK
    assert (folder / "secrets" / "hmac-key").read_text() != old
    assert mode(folder / "secrets" / "hmac-key") == 0o600
    assert "Replaced" in capsys.readouterr().out


def test_bad_url_is_refused_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "proxy"
    assert main(["init", str(folder), "--user-center", 'http://x"y']) == exitcodes.CONFIG
    assert "--user-center" in capsys.readouterr().err
    assert not folder.exists()


def test_default_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == exitcodes.OK
    assert (tmp_path / DEFAULT_DIR / "config.yaml").is_file()
    assert f"--config {DEFAULT_DIR}/config.yaml" in capsys.readouterr().out


async def run_cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=cwd,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


@pytest.mark.slow
async def test_first_run_init_check_serve_forwards_flow_1_to_the_simulator(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ENV}
    sandbox = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy.sandbox",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    sim = ProxyProcess(sandbox)
    serve: ProxyProcess | None = None
    try:
        banner = (await sim.wait_for(rb"User Center: +\S+\n")).decode()
        pay_api = re.search(r"Pay API: +(\S+)", banner)
        user_center = re.search(r"User Center: +(\S+)", banner)
        assert pay_api
        assert user_center
        rc, out = await run_cli(
            "init", "--pay-api", pay_api[1], "--user-center", user_center[1], env=env, cwd=tmp_path
        )
        assert rc == 0, out
        config = tmp_path / DEFAULT_DIR / "config.yaml"
        # Two proxies must not fight over 8080 on a shared test machine: only the ports change.
        port, admin = free_port(), free_port()
        text = config.read_text().replace(":8080", f":{port}").replace(":9090", f":{admin}")
        config.write_text(text)
        rc, out = await run_cli("check-config", "--config", str(config), env=env, cwd=tmp_path)
        assert rc == exitcodes.CONFIG, out
        env |= ENV
        rc, out = await run_cli("check-config", "--config", str(config), env=env, cwd=tmp_path)
        assert rc == 0, out
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--config", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
            cwd=tmp_path,
        )  # fmt: skip
        serve = ProxyProcess(process)
        await serve.wait_for(rb"gini-auth-proxy ready", timeout=30)
        async with aiohttp.ClientSession() as client:
            async with client.post(
                f"http://127.0.0.1:{port}/documents?filename=hello.pdf",
                headers={"X-User-Id": "alice", "Content-Type": "application/pdf"},
                data=b"hello gini",
            ) as answer:
                assert answer.status == 201, await answer.text()
            async with client.get(
                f"http://127.0.0.1:{port}/_sandbox/echo", headers={"X-User-Id": "alice"}
            ) as answer:
                seen = {k.lower(): v for k, v in (await answer.json())["headers"]}
        # The simulator saw alice's identifier, keyed with the generated hmac-key.
        key = (tmp_path / DEFAULT_DIR / "secrets" / "hmac-key").read_text().strip()
        assert seen["x-user-identifier"] == derive_identifier(key.encode(), "alice")
        assert "x-user-id" not in seen
    finally:
        for proc in (serve, sim):
            if proc is not None and proc.process.returncode is None:
                proc.process.kill()
                await proc.process.wait()


def test_an_unwritable_folder_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("not a folder\n")
    assert main(["init", str(tmp_path / "file")]) == exitcodes.CONFIG
    assert f"cannot write {tmp_path / 'file'}" in capsys.readouterr().err
