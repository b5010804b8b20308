"""Descriptors and connection limits, tried as an attacker would: the real process under the
open-file limits containers give it, flooded with silent connections on either port.

Each test starts `serve` in a subprocess whose limit is set before it runs (`preexec_fn`), so
what the proxy obtained, and what it did with it, is exactly what production would do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.config import build_config
from proxy.config.reader import ConfigError
from proxy.errors import RequestTimeout, TooManyConnections
from proxy.sandbox import GiniSimulator
from proxy.web.connections import raw_error

from .conftest import USER, config_data, merge
from .test_client_timeouts import parse_answer, read_until_closed
from .test_server import ProxyProcess, free_port

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def nofile(soft: int, hard: int) -> Callable[[], None]:
    def limit() -> None:  # runs in the child, before the proxy starts
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return limit


@pytest.fixture
async def limited(sim: GiniSimulator, tmp_path: Path) -> AsyncIterator[Any]:
    started: list[ProxyProcess] = []

    async def start(soft: int, hard: int, **overrides: Any) -> tuple[ProxyProcess, str, str]:
        listen, admin = free_port(), free_port()
        data = merge(
            config_data(sim, tmp_path),
            {"listen": f"127.0.0.1:{listen}", "admin_listen": f"127.0.0.1:{admin}", **overrides},
        )
        path = tmp_path / f"config-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(data))
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "proxy", "serve", "--config", str(path)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=nofile(soft, hard),  # before the proxy runs
        )
        proc = ProxyProcess(process)
        started.append(proc)
        await proc.wait_for(rb"gini-auth-proxy ready")
        return proc, f"http://127.0.0.1:{listen}", f"http://127.0.0.1:{admin}"

    yield start
    for proc in started:
        if proc.process.returncode is None:
            proc.process.kill()
            await proc.process.wait()


def port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def hold(url: str, count: int) -> list[Streams]:
    """`count` silent connections, opened a batch at a time (each sends nothing)."""
    held: list[Streams] = []
    for start in range(0, count, 100):
        batch = [
            asyncio.open_connection("127.0.0.1", port(url)) for _ in range(min(100, count - start))
        ]
        held += await asyncio.gather(*batch)
    return held


def close_all(held: list[Streams]) -> None:
    for _, writer in held:
        writer.close()


async def refused_or_open(reader: asyncio.StreamReader) -> bytes | None:
    """What a held connection got at once: the refusal (then EOF), or None while it is open."""
    try:
        async with asyncio.timeout(0.2):
            return await reader.read()
    except TimeoutError:
        return None


def assert_too_many(raw: bytes) -> None:
    status, headers, body = parse_answer(raw)
    assert status == 503, raw[:200]
    assert json.loads(body)["error"] == "too_many_connections"
    assert headers["retry-after"] == "1"
    assert headers["connection"] == "close"


def logged(proc: ProxyProcess, message: str) -> dict[str, Any]:
    for line in proc.output.decode().splitlines():
        with contextlib.suppress(ValueError):
            entry: dict[str, Any] = json.loads(line)
            if entry.get("message") == message:
                return entry
    raise AssertionError(f"{message!r} not logged:\n{proc.output.decode()[-2000:]}")


@pytest.mark.slow
async def test_a_low_hard_limit_lowers_max_connections_and_the_overflow_gets_503(
    limited: Any, client: aiohttp.ClientSession
) -> None:
    proc, url, admin = await limited(300, 300, client_timeouts={"header_seconds": 60})
    await proc.wait_for(rb'"connection limits"')
    entry = logged(proc, "connection limits")
    effective = entry["max_connections"]
    assert 0 < effective < 150  # two descriptors per caller, the admin share, the reserve
    held = await hold(url, 400)
    try:
        outcomes = await asyncio.gather(*(refused_or_open(reader) for reader, _ in held))
        assert outcomes.count(None) == effective  # admitted, still open and waiting
        for raw in outcomes:
            if raw is not None:
                assert_too_many(raw)
        # A new caller gets an answer too, not a reset or silence.
        async with client.get(url + "/_sandbox/echo", headers=USER) as response:
            assert response.status == 503
            assert (await response.json())["error"] == "too_many_connections"
            assert response.headers["Retry-After"] == "1"
        async with client.get(admin + "/status") as response:
            connections = (await response.json())["connections"]
        assert connections["max_connections"] == effective
        assert connections["configured_max_connections"] == 1000
        assert connections["open_file_limit"] == 300
    finally:
        close_all(held)
    await proc.wait_for(rb"open connections below max_connections again")
    async with client.get(url + "/_sandbox/echo", headers=USER) as response:
        assert response.status == 200


@pytest.mark.slow
async def test_a_flood_on_the_admin_port_leaves_the_proxy_port_serving(
    limited: Any, client: aiohttp.ClientSession
) -> None:
    # The usual container limits; timeouts short enough to watch idle admin callers go.
    timeouts = {"header_seconds": 5, "idle_seconds": 5}
    proc, url, admin = await limited(1024, 4096, client_timeouts=timeouts)
    held = await hold(admin, 2400)
    try:
        outcomes = await asyncio.gather(*(refused_or_open(reader) for reader, _ in held))
        open_ones = [held[i] for i, raw in enumerate(outcomes) if raw is None]
        assert 0 < len(open_ones) <= 64  # admin_max_connections
        refused = 0
        for raw in outcomes:
            if raw is not None and parse_answer(raw)[0] != 408:  # admitted, then cut (slow run)
                assert_too_many(raw)
                refused += 1
        assert refused >= 2400 - 2 * 64
        # The proxy port is untouched by the flood.
        for _ in range(20):
            async with client.get(url + "/_sandbox/echo", headers=USER) as response:
                assert response.status == 200
        # Idle admin callers are cut by the head timeout, each with its 408.
        for reader, _ in open_ones:
            raw = await read_until_closed(reader, 10)
            status, headers, _ = parse_answer(raw)
            assert status == 408
            assert "retry-after" not in headers
    finally:
        close_all(held)
    await proc.wait_for(rb"open connections below admin_max_connections again")
    async with client.get(admin + "/healthz") as response:
        assert response.status == 200


def test_retry_after_only_where_retrying_helps() -> None:
    assert b"\r\nRetry-After: 1\r\n" in raw_error(TooManyConnections())
    timeout = raw_error(RequestTimeout())
    assert timeout.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"Retry-After" not in timeout
    head, _, body = timeout.partition(b"\r\n\r\n")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert int(headers[b"Content-Length"]) == len(body)
    error = json.loads(body)
    assert error == {
        "error": "request_timeout",
        "message": RequestTimeout.default_message,
        "requestId": headers[b"X-Request-Id"].decode(),
    }


def test_the_new_limits_are_validated_together(tmp_path: Path) -> None:
    minimal = {
        "client": {"id": "my-client", "secret": "client-secret-value-4f1c2e"},
        "identity": {"hmac_key": "hmac-key-0123456789abcdef0123456789abcdef"},
    }
    defaults = build_config(minimal, {}, tmp_path)
    assert (defaults.admin_max_connections, defaults.max_header_bytes) == (64, 32768)
    with pytest.raises(ConfigError) as caught:
        build_config({**minimal, "admin_max_connections": 0, "max_header_bytes": 100}, {}, tmp_path)
    problems = "\n".join(caught.value.problems)
    assert "admin_max_connections" in problems
    assert "max_header_bytes" in problems
