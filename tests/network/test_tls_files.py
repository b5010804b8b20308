"""Half-written `upstream.tls` files: refused by `check-config`, and on reload counted `error`
while the TLS context in force keeps serving a strict mTLS Gini."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
import trustme
import yaml

from proxy.cli import main
from proxy.config import build_config
from proxy.config.reader import ConfigError

from ..conftest import USER, StartProxy, eventually, merge
from ..secret_volume import SecretVolume
from ..test_secret_files import finishes_within, point_at_fifo
from .support import Pki, tls_simulator
from .test_tls import config_data_for

KEYS = ("ca_file", "client_cert_file", "client_key_file")


def half_written(pki: Pki, key: str) -> bytes:
    """The file of `key` as a writer leaves it when it stops half-way through a rotation: the
    whole current content, then the first half of a new one of the same kind."""
    current = {"ca_file": pki.ca_file, "client_cert_file": pki.client_cert_file}
    current["client_key_file"] = pki.client_key_file
    fresh = trustme.CA().issue_cert("next")
    new = {
        "ca_file": trustme.CA().cert_pem.bytes(),
        "client_cert_file": fresh.cert_chain_pems[0].bytes(),
        "client_key_file": fresh.private_key_pem.bytes(),
    }[key]
    return current[key].read_bytes() + new[: len(new) // 2]


def tls_section(pki: Pki) -> dict[str, str]:
    return {
        "ca_file": str(pki.ca_file),
        "client_cert_file": str(pki.client_cert_file),
        "client_key_file": str(pki.client_key_file),
    }


def path_of(pki: Pki, key: str) -> Path:
    return Path(tls_section(pki)[key])


@pytest.mark.parametrize("key", KEYS)
def test_check_config_refuses_a_half_written_tls_file(
    tmp_path: Path, pki: Pki, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = path_of(pki, key)
    secret_lines = [line for line in path.read_text().splitlines() if "-----" not in line]
    path.write_bytes(half_written(pki, key))
    data = merge(config_data_for(tmp_path), {"upstream": {"tls": tls_section(pki)}})
    with pytest.raises(ConfigError) as caught:
        build_config(data, {}, tmp_path)
    (problem,) = caught.value.problems
    assert re.fullmatch(
        rf"upstream\.tls\.{key}: {re.escape(str(path))} has a PEM block that begins on line \d+ "
        r"and never ends \(a truncated or half-written file\?\)",
        problem,
    ), problem
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    assert main(["check-config", "--config", str(config)]) == 2
    out, err = capsys.readouterr()
    assert f"upstream.tls.{key}: {path} has a PEM block" in err
    assert not any(line in out + err for line in secret_lines)


@pytest.mark.parametrize("key", KEYS)
async def test_a_half_written_tls_file_is_never_applied_on_reload(
    start_proxy: StartProxy, pki: Pki, key: str
) -> None:
    async with tls_simulator(pki.server_context(require_client_cert=True)) as strict:
        upstream = {"pay_api": strict.pay_api_url, "user_center": strict.user_center_url}
        proxy = await start_proxy(
            upstream={**upstream, "tls": tls_section(pki)}, reload_interval_seconds=0
        )
        tls = proxy.services.upstream.tls

        async def status() -> int:
            async with proxy.client.get(proxy.url + "/paymentProviders", headers=USER) as answer:
                return answer.status

        def counted(result: str) -> float:
            labels = {"secret": "upstream.tls", "result": result}
            registry = proxy.metrics.registry
            return registry.get_sample_value("gini_proxy_secret_reloads_total", labels) or 0

        assert await status() == 200
        path = path_of(pki, key)
        whole = path.read_bytes()
        path.write_bytes(half_written(pki, key))
        assert await proxy.services.reloader.reload() == {"upstream.tls": "error"}
        assert tls.refresh() is False  # nor does the context's own check on use take it
        assert tls.rebuilds == 0
        assert await status() == 200  # the pair in force still satisfies the strict Gini
        assert (counted("error"), counted("applied")) == (1, 0)
        # The writer finishes: the file is whole again (and differs from the one at startup).
        path.write_bytes(whole + b"\n")
        assert await proxy.services.reloader.reload() == {"upstream.tls": "applied"}
        assert tls.rebuilds == 1
        assert await status() == 200


def test_tls_files_that_are_not_regular_files_are_config_problems(tmp_path: Path, pki: Pki) -> None:
    fifo = tmp_path / "ca-fifo.pem"
    os.mkfifo(fifo)  # if a reader blocks on it anyway, it stays blocked: a daemon thread
    data = merge(
        config_data_for(tmp_path),
        {"upstream": {"tls": {"ca_file": str(fifo), "client_cert_file": str(tmp_path)}}},
    )
    data["upstream"]["tls"]["client_key_file"] = str(pki.client_key_file)
    with pytest.raises(ConfigError) as caught:
        finishes_within(10, lambda: build_config(data, {}, tmp_path))  # no wait for a writer
    problems = sorted(caught.value.problems)
    assert problems == [
        f"upstream.tls.ca_file: cannot read {fifo}: not a regular file (it is a FIFO)",
        f"upstream.tls.client_cert_file: cannot read {tmp_path}: "
        "not a regular file (it is a directory)",
    ]


async def test_the_check_on_use_never_waits_on_a_fifo_and_picks_up_a_rotation(
    start_proxy: StartProxy, pki: Pki, tmp_path: Path
) -> None:
    """No reload at all: only the context's own check on use, which runs in a thread."""
    volume = SecretVolume(tmp_path / "tls")
    volume.write(**{"ca.pem": trustme.CA().cert_pem.bytes().decode()})  # Gini is not trusted
    proxy = await start_proxy(
        upstream={"tls": {"ca_file": str(volume.path("ca.pem"))}}, reload_interval_seconds=0
    )
    tls = proxy.services.upstream.tls
    tls.interval = 0.05
    assert tls.refresh() is False  # nothing changed; the next check is due in 50 ms

    async def timed_status() -> tuple[int, float]:
        started = time.monotonic()
        async with proxy.client.get(proxy.url + "/paymentProviders", headers=USER) as answer:
            await answer.read()
            return answer.status, time.monotonic() - started

    point_at_fifo(volume, "ca.pem")
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # ten checks' worth of requests
        status, took = await timed_status()
        assert (status, took < 1.0) == (502, True)
    assert tls.rebuilds == 0
    volume.write(**{"ca.pem": pki.ca.cert_pem.bytes().decode()})

    async def trusted() -> bool:
        return (await timed_status())[0] == 200

    await eventually(trusted)
    assert tls.rebuilds == 1
