"""Secret files that are not regular files, or that hang: refused at startup, counted `error`
on reload, and never a stall of the event loop (flow 1 and /healthz keep answering)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.config import build_config
from proxy.config.files import MAX_FILE_BYTES, OffLoop, read_regular
from proxy.config.reader import ConfigError
from proxy.config.reload import InvalidSecret, SecretSource, text_value
from proxy.sandbox import GiniSimulator

from .conftest import CLIENT_SECRET, USER, RunningProxy, StartProxy, config_data, eventually, merge
from .secret_volume import SecretVolume
from .test_server import free_port, spawn

NEW_SECRET = "rotated-client-secret-5e0f12"


def finishes_within(seconds: float, work: Callable[[], Any]) -> Any:
    """`work()` in a daemon thread; fails (instead of hanging the suite) if it blocks."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(("value", work()))
        except BaseException as exc:  # re-raised below, in the test's thread
            outcome.append(("error", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO nobody writes to; afterwards, any reader stuck on it (old code) is let go."""
    path = tmp_path / "secret-fifo"
    os.mkfifo(path)
    yield path
    with contextlib.suppress(OSError):  # ENXIO: no reader is waiting, as it should be
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


# --- reading -----------------------------------------------------------------------------------


def test_only_regular_files_are_read_and_symlinks_are_followed(tmp_path: Path, fifo: Path) -> None:
    volume = SecretVolume(tmp_path / "secrets")
    volume.write(key="value\n")
    assert read_regular(volume.path("key")) == b"value\n"  # key -> ..data/key -> ..2026_.../key
    (tmp_path / "to-fifo").symlink_to(fifo)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    try:
        cases = {
            fifo: "a FIFO",
            tmp_path / "to-fifo": "a FIFO",  # judged after following the link
            tmp_path: "a directory",
            Path("/dev/null"): "a character device",
            tmp_path / "sock": "a socket",
        }
        for path, kind in cases.items():
            with pytest.raises(OSError, match="not a regular file") as refused:
                finishes_within(5, functools.partial(read_regular, path))
            assert refused.value.strerror == f"not a regular file (it is {kind})"
    finally:
        server.close()
    with pytest.raises(OSError, match="No such file") as missing:
        read_regular(tmp_path / "missing")
    assert missing.value.errno == errno.ENOENT


def test_a_file_is_read_up_to_the_bound_and_refused_past_it(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"k" * MAX_FILE_BYTES)
    assert len(read_regular(path)) == MAX_FILE_BYTES
    path.write_bytes(b"k" * (MAX_FILE_BYTES + 1))
    with pytest.raises(OSError, match="larger than"):
        read_regular(path)
    assert read_regular(path, limit=2 * MAX_FILE_BYTES) == b"k" * (MAX_FILE_BYTES + 1)


class _Urls:
    """Where a config points when no simulator is needed (nothing is called)."""

    pay_api_url = "http://127.0.0.1:9/pay"
    user_center_url = "http://127.0.0.1:9/uc"


def offline_config(tmp_path: Path) -> dict[str, Any]:
    return config_data(_Urls(), tmp_path)  # type: ignore[arg-type]


def test_a_fifo_at_a_secret_path_is_a_config_problem_not_a_hang(tmp_path: Path, fifo: Path) -> None:
    data = merge(offline_config(tmp_path), {"client": {"secret": {"file": str(fifo)}}})
    with pytest.raises(ConfigError) as caught:
        finishes_within(10, lambda: build_config(data, {}, tmp_path))
    assert caught.value.problems == [
        f"client.secret: cannot read file {fifo}: not a regular file (it is a FIFO)"
    ]


@pytest.mark.slow
async def test_check_config_on_a_fifo_exits_2_at_once(tmp_path: Path, fifo: Path) -> None:
    config = tmp_path / "config.yaml"
    data = merge(offline_config(tmp_path), {"identity": {"hmac_key": {"file": str(fifo)}}})
    config.write_text(yaml.safe_dump(data))
    # A blocking run in a thread: this needs no event-loop child watcher, which another test's
    # loop (uvloop, in-process) can leave unable to see a child exit.
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "proxy", "check-config", "--config", str(config)],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 2
    message = f"identity.hmac_key: cannot read file {fifo}: not a regular file"
    assert message in done.stdout.decode() + done.stderr.decode()


# --- OffLoop -----------------------------------------------------------------------------------


async def test_off_loop_work_is_bounded_and_one_at_a_time_per_key(fifo: Path) -> None:
    """A read that hangs for real (a blocking open of a FIFO stands in for a stuck network
    mount): given up on after the timeout, its key refused while it is stuck, other keys free."""
    off_loop = OffLoop(timeout=0.3)

    def stuck() -> bytes:
        with fifo.open("rb") as handle:  # blocks until a writer opens the FIFO
            return handle.read()

    started = time.monotonic()
    with pytest.raises(OSError, match="no answer from the file system") as late:
        await off_loop.run("a", stuck)
    assert late.value.errno == errno.ETIMEDOUT
    assert 0.25 <= time.monotonic() - started < 2
    with pytest.raises(OSError, match="has not returned") as busy:
        await off_loop.run("a", lambda: b"never run")
    assert busy.value.errno == errno.EBUSY
    assert await off_loop.run("b", lambda: b"other key") == b"other key"
    assert [t.name for t in threading.enumerate()].count("file-read a") == 1
    with pytest.raises(InvalidSecret):  # exceptions of the work reach the caller
        await off_loop.run("c", lambda: text_value((b"  ",)))

    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # the mount recovers
    os.close(writer)

    async def freed() -> bool:
        return "a" not in off_loop.busy

    await eventually(freed)
    assert await off_loop.run("a", lambda: b"again") == b"again"


async def latency(proxy: RunningProxy, url: str, headers: dict[str, str]) -> float:
    started = time.monotonic()
    async with proxy.client.get(url, headers=headers, timeout=aiohttp.ClientTimeout(5)) as answer:
        assert answer.status == 200
        await answer.read()
    return time.monotonic() - started


async def test_a_hung_read_during_a_reload_stalls_nothing_and_counts_error(
    start_proxy: StartProxy, tmp_path: Path, fifo: Path
) -> None:
    proxy = await start_proxy(reload_interval_seconds=0)
    reloader = proxy.services.reloader
    reloader.off_loop.timeout = 1.0
    plain = tmp_path / "plain-secret"
    plain.write_text("first")
    applied: list[str] = []

    def stuck_load(contents: tuple[bytes, ...]) -> str:
        with fifo.open("rb"):  # a load that hangs in the file system
            return text_value(contents)

    reloader.register(SecretSource("test.hung", (plain,), stuck_load, "", applied.append))
    pass_ = asyncio.create_task(reloader.reload("test.hung"))
    timings = []
    while not pass_.done():
        timings.append(await latency(proxy, proxy.admin_url + "/healthz", {}))
        timings.append(await latency(proxy, proxy.url + "/documents", USER))
    assert await pass_ == {"test.hung": "error"}
    assert len(timings) >= 4
    assert max(timings) < 1.0, timings
    # While the read is stuck, the next pass refuses at once instead of starting a thread.
    started = time.monotonic()
    assert await reloader.reload("test.hung") == {"test.hung": "error"}
    assert time.monotonic() - started < 0.5
    labels = {"secret": "test.hung", "result": "error"}
    assert proxy.metrics.registry.get_sample_value("gini_proxy_secret_reloads_total", labels) == 2
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the mount recovers

    async def freed() -> bool:
        return not reloader.off_loop.busy

    await eventually(freed)
    plain.write_text("second")
    os.unlink(fifo)
    os.mkfifo(fifo)
    opener = threading.Timer(0.1, lambda: os.close(os.open(fifo, os.O_WRONLY)))
    opener.daemon = True
    opener.start()  # this time the file system answers, a little late
    assert await reloader.reload("test.hung") == {"test.hung": "applied"}
    opener.join()
    assert applied == ["second"]


# --- a running proxy ---------------------------------------------------------------------------


def point_at_fifo(volume: SecretVolume, name: str) -> None:
    """A new generation of the Secret volume in which `name` is a FIFO (the kubelet would
    never do this; an attacker or a broken sidecar could)."""
    volume.generation += 1
    target = volume.root / f"..fifo_{volume.generation:06d}"
    target.mkdir()
    os.mkfifo(target / name)
    temporary = volume.root / "..data_tmp"
    temporary.symlink_to(target.name)
    os.replace(temporary, volume.root / "..data")


async def test_a_fifo_secret_is_counted_error_in_process_and_serving_goes_on(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    volume = SecretVolume(tmp_path / "secrets")
    volume.write(client_secret=CLIENT_SECRET)
    proxy = await start_proxy(
        client={"secret": {"file": str(volume.path("client_secret"))}}, reload_interval_seconds=0
    )
    point_at_fifo(volume, "client_secret")
    started = time.monotonic()
    assert await proxy.services.reloader.reload() == {"client.secret": "error"}
    assert time.monotonic() - started < 1.0  # refused, not waited on
    assert await latency(proxy, proxy.url + "/documents", USER) < 1.0


@pytest.mark.slow
async def test_sighup_with_a_fifo_secret_keeps_flow1_and_healthz_answering(
    sim: GiniSimulator, tmp_path: Path
) -> None:
    """The real process, a Kubernetes-style Secret volume whose file turns into a FIFO, and
    SIGHUP: every request is answered within a second, the reload counts `error`, and the
    next good file is applied."""
    volume = SecretVolume(tmp_path / "secrets")
    volume.write(client_secret=CLIENT_SECRET)
    listen, admin = free_port(), free_port()
    data = merge(
        config_data(sim, tmp_path),
        {
            "listen": f"127.0.0.1:{listen}",
            "admin_listen": f"127.0.0.1:{admin}",
            "client": {"secret": {"file": str(volume.path("client_secret"))}},
            "reload_interval_seconds": 0,
        },
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    proc = await spawn("serve", "--config", str(config))
    url, admin_url = f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{admin}"
    try:
        await proc.wait_for(rb"gini-auth-proxy ready")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as client:

            async def timed(target: str, headers: dict[str, str]) -> float:
                started = time.monotonic()
                async with client.get(target, headers=headers) as answer:
                    assert answer.status == 200
                    await answer.read()
                return time.monotonic() - started

            async def reloads(result: str) -> bool:
                async with client.get(admin_url + "/metrics") as answer:
                    text = await answer.text()
                labels = f'result="{result}",secret="client.secret"'
                return f"gini_proxy_secret_reloads_total{{{labels}}} 1.0" in text

            assert await timed(url + "/documents", USER) < 5
            point_at_fifo(volume, "client_secret")
            proc.process.send_signal(signal.SIGHUP)
            timings = []
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                timings.append(await timed(admin_url + "/healthz", {}))
                timings.append(await timed(url + "/documents", USER))
            assert max(timings) < 1.0, timings
            await eventually(lambda: reloads("error"))
            sim.accept_client_secrets(CLIENT_SECRET, NEW_SECRET)
            volume.write(client_secret=NEW_SECRET)  # a regular file again: applied
            proc.process.send_signal(signal.SIGHUP)
            await eventually(lambda: reloads("applied"), within=10)
        proc.process.send_signal(signal.SIGTERM)
        assert await proc.finish() == 0
        assert "not a regular file (it is a FIFO)" in proc.output.decode()
    finally:
        if proc.process.returncode is None:
            proc.process.kill()
            await proc.process.wait()
