"""Real Redis servers (single and a three-node cluster) and proxy replicas as processes, for
the fleet tests. Each server is our own, on free loopback ports in a temporary directory, with
no persistence, and is killed afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.sandbox import GiniSimulator

from .conftest import config_data, eventually_sync, merge


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_binary(name: str = "redis-server") -> str:
    """The binary's path; skip (fail under CI=true) when it is not installed."""
    binary = shutil.which(name)
    if binary is None:
        message = f"{name} is not installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true: failing instead of skipping")
        pytest.skip(message)
    return binary


def _wait_listening(port: int, within: float = 10.0) -> None:
    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    eventually_sync(listening, within, f"redis-server listening on {port}")


def start_redis(
    directory: Path, *extra: str, port: int | None = None
) -> tuple[int, subprocess.Popen[bytes]]:
    """A redis-server of our own on a free loopback port (or on `port`, to restart one)."""
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory), "--enable-debug-command", "yes",
         *extra],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_listening(port)
    except AssertionError:
        stop(process)
        raise
    return port, process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    port, process = start_redis(tmp_path / "redis")
    yield port
    stop(process)


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[list[int]]:
    """Three masters, no replicas, all 16384 slots covered."""
    cli = redis_binary("redis-cli")
    started = [
        # The bus port is given: port + 10000 (the default) may be past 65535.
        start_redis(tmp_path / f"node-{n}", "--cluster-enabled", "yes",
                    "--cluster-port", str(free_port()),
                    "--cluster-config-file", f"nodes-{n}.conf", "--cluster-node-timeout", "2000")
        for n in range(3)
    ]  # fmt: skip
    ports = [port for port, _ in started]
    try:
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip

        def cluster_up() -> bool:  # every node must agree before the test uses it
            return all(
                b"cluster_state:ok"
                in subprocess.run(
                    [cli, "-p", str(p), "cluster", "info"],
                    check=False,
                    capture_output=True,
                    timeout=5,
                ).stdout
                for p in ports
            )

        eventually_sync(cluster_up, 20, "the cluster up")
        yield ports
    finally:
        for _, process in started:
            stop(process)


@dataclass
class Replica:
    """One `gini-auth-proxy serve` process."""

    process: asyncio.subprocess.Process
    url: str
    admin_url: str
    output: bytearray = field(default_factory=bytearray)

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)


async def _wait_ready(replica: Replica, timeout: float = 30) -> None:
    stdout = replica.process.stdout
    assert stdout is not None
    deadline = asyncio.get_running_loop().time() + timeout
    while not re.search(rb"gini-auth-proxy ready", replica.output):
        remaining = deadline - asyncio.get_running_loop().time()
        line = await asyncio.wait_for(stdout.readline(), max(remaining, 0.01))
        if not line:
            raise AssertionError(f"replica ended before ready:\n{replica.output.decode()}")
        replica.output += line


async def _drain(replica: Replica) -> None:
    stdout = replica.process.stdout
    assert stdout is not None
    with contextlib.suppress(Exception):
        while line := await stdout.readline():
            replica.output += line


@dataclass
class Replicas:
    """Start replicas sharing one simulator, one store directory and one fleet section."""

    sim: GiniSimulator
    tmp_path: Path
    started: list[Replica] = field(default_factory=list)
    _drains: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self, n: int, **overrides: Any) -> list[Replica]:
        replicas = await asyncio.gather(*(self._one(**overrides) for _ in range(n)))
        return list(replicas)

    async def _one(self, **overrides: Any) -> Replica:
        listen, admin = free_port(), free_port()
        data = merge(
            config_data(self.sim, self.tmp_path),
            {"listen": f"127.0.0.1:{listen}", "admin_listen": f"127.0.0.1:{admin}", **overrides},
        )
        path = self.tmp_path / f"replica-{listen}.yaml"
        path.write_text(yaml.safe_dump(data))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--config", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        replica = Replica(process, f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{admin}")
        self.started.append(replica)
        await _wait_ready(replica)
        self._drains.append(asyncio.create_task(_drain(replica)))
        return replica

    async def close(self) -> None:
        for replica in self.started:
            replica.kill()
            await replica.process.wait()
        await asyncio.gather(*self._drains, return_exceptions=True)


@contextlib.asynccontextmanager
async def replicas(sim: GiniSimulator, tmp_path: Path) -> AsyncIterator[Replicas]:
    group = Replicas(sim, tmp_path)
    try:
        yield group
    finally:
        await group.close()


def fleet_section(port: int, **overrides: Any) -> dict[str, Any]:
    return {"redis_url": f"redis://127.0.0.1:{port}/0", **overrides}


async def vend(client: aiohttp.ClientSession, base: str, user: str, flow: str = "derived") -> str:
    async with client.post(f"{base}/_proxy/tokens/{flow}", headers={"X-User-Id": user}) as r:
        assert r.status == 200, await r.text()
        token: str = (await r.json())["access_token"]
        return token


async def metric(client: aiohttp.ClientSession, admin_url: str, name: str) -> float:
    """The sum of a metric's samples on a replica's /metrics (0 when absent)."""
    async with client.get(f"{admin_url}/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def logins(sim: GiniSimulator) -> int:
    """`/login` requests that reached the simulator, answered or not."""
    return sum(1 for r in sim.state.requests_of("pay") if r.path == "/login")
