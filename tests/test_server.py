"""The real process: `serve` and `demo` as subprocesses, signals, drain and exit codes."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.app import Services
from proxy.config import build_config
from proxy.sandbox import GiniSimulator
from proxy.server import YOUNG_COLLECTION_THRESHOLD, run

from .conftest import USER, config_data, eventually, merge

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ProxyProcess:
    """`python -m proxy ...` in a subprocess, its output read as it comes: a pipe nobody reads
    fills at 64 KiB, and the proxy then blocks writing its access lines."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self.output = b""
        self._grew = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while chunk := await self.process.stdout.read(65536):
            self.output += chunk
            self._grew.set()
        self._grew.set()  # the end: waiters look once more, then give up

    async def wait_for(self, pattern: bytes, timeout: float = 15) -> bytes:
        async with asyncio.timeout(timeout):
            while True:
                self._grew.clear()
                if re.search(pattern, self.output):
                    return self.output
                if self._reader.done():
                    raise AssertionError(
                        f"process ended without {pattern!r}:\n{self.output.decode()}"
                    )
                await self._grew.wait()

    async def finish(self, timeout: float = 15) -> int:
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return await asyncio.wait_for(self.process.wait(), timeout)


async def spawn(*args: str, env: dict[str, str] | None = None) -> ProxyProcess:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    return ProxyProcess(process)


@pytest.fixture
async def serve(sim: GiniSimulator, tmp_path: Path) -> AsyncIterator[Any]:
    started: list[ProxyProcess] = []

    async def start(**overrides: Any) -> tuple[ProxyProcess, str, str]:
        listen, admin = free_port(), free_port()
        data = merge(
            config_data(sim, tmp_path),
            {"listen": f"127.0.0.1:{listen}", "admin_listen": f"127.0.0.1:{admin}", **overrides},
        )
        path = tmp_path / f"config-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(data))
        proc = await spawn("serve", "--config", str(path))
        started.append(proc)
        await proc.wait_for(rb"gini-auth-proxy ready")
        return proc, f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{admin}"

    yield start
    for proc in started:
        if proc.process.returncode is None:
            proc.process.kill()
            await proc.process.wait()


async def test_sigterm_drains_in_flight_request_then_exits_0(
    serve: Any, sim: GiniSimulator
) -> None:
    proc, url, admin = await serve(drain_delay_seconds=0.5, shutdown_grace_seconds=10)
    async with aiohttp.ClientSession() as client:
        async with client.get(admin + "/readyz") as response:
            assert response.status == 200
        slow = asyncio.create_task(client.get(url + "/_sandbox/echo?delay=1.5", headers=USER))
        await eventually(lambda: any(r.path == "/_sandbox/echo" for r in sim.state.requests))
        proc.process.send_signal(signal.SIGTERM)

        async def draining() -> bool:
            async with client.get(admin + "/readyz") as response:
                return response.status == 503 and (await response.json())["error"] == "draining"

        await eventually(draining, what="/readyz 503 draining")
        # During the pre-stop delay new requests are still served.
        async with client.get(url + "/_sandbox/echo", headers=USER) as response:
            assert response.status == 200
        response = await slow
        assert response.status == 200
        assert (await response.json())["path"] == "/_sandbox/echo"
        response.release()
    assert await proc.finish() == 0
    assert b"drained" in proc.output


async def test_idle_proxy_exits_promptly_after_the_delay(serve: Any) -> None:
    proc, _, _ = await serve(drain_delay_seconds=0, shutdown_grace_seconds=30)
    loop = asyncio.get_running_loop()
    started = loop.time()
    proc.process.send_signal(signal.SIGTERM)
    assert await proc.finish() == 0
    assert loop.time() - started < 5


async def test_second_signal_exits_at_once(serve: Any) -> None:
    proc, _, _ = await serve(drain_delay_seconds=30)
    proc.process.send_signal(signal.SIGTERM)
    await proc.wait_for(rb"draining")
    proc.process.send_signal(signal.SIGINT)
    assert await proc.finish(timeout=5) == 1


async def test_port_taken_is_exit_3(sim: GiniSimulator, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = merge(
            config_data(sim, tmp_path),
            {"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{free_port()}"},
        )
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        proc = await spawn("serve", "--config", str(path))
        assert await proc.finish() == 3
    assert b"cannot listen" in proc.output


async def test_bad_config_is_exit_2_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("listen: 0.0.0.0:8080\nclient: {id: x}\nbogus: 1\n")
    proc = await spawn("serve", "--config", str(path))
    assert await proc.finish() == 2
    for fragment in (b"listen", b"client.secret", b"identity", b"bogus"):
        assert fragment in proc.output


async def test_demo_serves_flow_1_and_stops_on_ctrl_c() -> None:
    port, admin = free_port(), free_port()
    proc = await spawn("demo", "--port", str(port), "--admin-port", str(admin))
    try:
        banner = (await proc.wait_for(rb"Operations:")).decode()
        assert f"http://127.0.0.1:{port}/_proxy/tokens/derived" in banner
        async with aiohttp.ClientSession() as client:
            async with client.post(
                f"http://127.0.0.1:{port}/documents?filename=a.pdf",
                data=b"hello gini",
                headers={"X-User-Id": "alice", "Content-Type": "application/pdf"},
            ) as response:
                assert response.status == 201
                assert response.headers["Location"].startswith(
                    f"http://127.0.0.1:{port}/documents/"
                )
            async with client.get(f"http://127.0.0.1:{admin}/metrics") as response:
                assert "gini_proxy_requests_total" in await response.text()
        proc.process.send_signal(signal.SIGINT)
        assert await proc.finish() == 0
    finally:
        if proc.process.returncode is None:
            proc.process.kill()
            await proc.process.wait()


@pytest.mark.postgres
async def test_two_processes_sharing_postgres_create_one_gini_user(
    serve: Any, sim: GiniSimulator
) -> None:
    """Two `serve` processes (two replicas) and 40 concurrent first requests for one id."""
    from .stores_support import postgres_schema

    sim.state.user_center_delay = 0.05  # widen the race window
    async with postgres_schema() as dsn:
        store = {"url": dsn}
        (_, first, _), (_, second, _) = [await serve(store=store) for _ in range(2)]
        async with aiohttp.ClientSession() as client:

            async def vend(base: str) -> str:
                async with client.post(base + "/_proxy/tokens/anonymous", headers=USER) as r:
                    assert r.status == 200, await r.text()
                    token: str = (await r.json())["access_token"]
                    return token

            tokens = await asyncio.gather(*(vend(first if n % 2 else second) for n in range(40)))
    assert sim.state.users_created == 1
    assert len(sim.state.user_emails()) == 1
    assert len(set(tokens)) <= 2  # one login per process at most


async def test_serving_tunes_the_collector_and_restores_it(
    sim: GiniSimulator, tmp_path: Path
) -> None:
    """While `run` serves, the startup heap is frozen and young collections are rarer; the
    interpreter's own settings come back when it returns (here, in the test's process)."""
    data = merge(config_data(sim, tmp_path), {"admin_listen": f"127.0.0.1:{free_port()}"})
    config = build_config(data, os.environ, tmp_path)
    before = gc.get_threshold()
    seen: list[tuple[int, int]] = []

    def ready() -> None:
        seen.append((gc.get_threshold()[0], gc.get_freeze_count()))
        os.kill(os.getpid(), signal.SIGTERM)  # run() handles it: drain, then return 0

    assert await run(Services(config), on_ready=ready) == 0
    assert seen[0][0] == YOUNG_COLLECTION_THRESHOLD != before[0]
    assert seen[0][1] > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
