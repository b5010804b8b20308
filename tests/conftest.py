"""Shared fixtures: a real Gini simulator on loopback and a real proxy in front of it."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import settings

from proxy import log as proxy_log
from proxy.app import Services
from proxy.config import Config, build_config
from proxy.metrics import Metrics
from proxy.sandbox import GiniSimulator
from proxy.server import make_runners

# No per-example deadline: on a loaded 2-core CI machine a slow example is not a bug, and a
# deadline turns it into a flaky failure that a fresh clone could hit.
settings.register_profile("gini-auth-proxy", deadline=None, print_blob=True)
settings.load_profile("gini-auth-proxy")

FAST = os.environ.get("GINI_PROXY_TEST_FAST") == "1"
# The documented Redis service (each test keeps to keys of its own).
REDIS_URL = os.environ.get("GINI_PROXY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
"""Set by `scripts/test --fast`: the inner loop, where the heaviest property tests run fewer
examples. The full run (CI) always runs the counts written in the tests."""


def examples(n: int) -> int:
    """`max_examples` for a property test that costs seconds at its full count."""
    return max(20, n // 10) if FAST else n


def _lazy_system_roots() -> None:
    """Read the system CA roots from their hashed directory, on demand, not from the bundle.

    Every started proxy builds its upstream SSL context (`transport.tls.build_context`), and
    parsing the bundle file costs ~20 ms each time; hundreds of proxies start in a run. The
    hashed directory holds the same roots, so what is trusted does not change. Left alone
    where there is no such directory, or where SSL_CERT_FILE names a bundle of one's own.
    """
    paths = ssl.get_default_verify_paths()
    bundle = os.environ.get("SSL_CERT_FILE", paths.openssl_cafile)
    if os.path.realpath(bundle) != os.path.realpath(paths.openssl_cafile):
        return
    if not paths.capath or not os.path.isdir(paths.capath):
        return
    if not any(name.endswith(".0") for name in os.listdir(paths.capath)):  # not hashed
        return
    os.environ["SSL_CERT_FILE"] = os.devnull  # no bundle: the directory alone is used


_lazy_system_roots()

CLIENT_ID = "test-client"
CLIENT_SECRET = "test-client-secret-7f3a9c"
HMAC_KEY = "hmac-key-for-tests-0123456789abcdef"
STORE_KEY = base64.b64encode(b"s" * 32).decode()
INBOUND_KEY = "inbound-key-0123456789"


def merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `overrides` into a copy of `base` (a None value deletes the key)."""
    merged = dict(base)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def config_data(sim: GiniSimulator, tmp_path: Path) -> dict[str, Any]:
    """A complete config pointing at `sim`, as a mapping to tweak before validation."""
    return {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:1",  # replaced: runners bind port 0 in tests
        "public_url": "http://proxy.test:8080",
        "upstream": {
            "pay_api": sim.pay_api_url,
            "user_center": sim.user_center_url,
            "connect_timeout_seconds": 2,
            "timeout_seconds": 5,
        },
        "client": {"id": CLIENT_ID, "secret": CLIENT_SECRET},
        "identity": {"hmac_key": HMAC_KEY},
        "anonymous": {"email_domain": "anon.example.com"},
        "store": {"url": f"sqlite:///{tmp_path}/store.db", "encryption_key": STORE_KEY},
        "drain_delay_seconds": 0,
        "shutdown_grace_seconds": 2,
    }


@dataclass
class RunningProxy:
    """A proxy serving on loopback: its URLs, its services and a client session."""

    url: str
    admin_url: str
    services: Services
    client: aiohttp.ClientSession

    @property
    def config(self) -> Config:
        return self.services.config

    @property
    def metrics(self) -> Metrics:
        return self.services.metrics


StartProxy = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
async def sim() -> AsyncIterator[GiniSimulator]:
    async with GiniSimulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def _logging_as_found() -> Iterator[None]:
    """Each test starts with the logging the previous one found: a CLI run or a
    `configure_logging` into pytest's captured output would otherwise leave the root handlers
    and the access-log output pointing at a stream closed after that test."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, proxy_log.access_stream())
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    proxy_log._access_output = saved[2]


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Where `configure_logging(..., stream)` may write in a test; the root logger's handlers
    and level are restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture
async def start_proxy(
    sim: GiniSimulator, tmp_path: Path, client: aiohttp.ClientSession
) -> AsyncIterator[StartProxy]:
    """Start proxies with config overrides (deep-merged over `config_data`)."""
    runners: list[web.AppRunner] = []

    async def start(**overrides: Any) -> RunningProxy:
        config = build_config(merge(config_data(sim, tmp_path), overrides), os.environ, tmp_path)
        services = Services(config)
        urls = []
        for runner in make_runners(services):
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            urls.append(f"http://{host}:{port}")
        return RunningProxy(urls[0], urls[1], services, client)

    yield start
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def proxy(start_proxy: StartProxy) -> RunningProxy:
    """A proxy with the default test config."""
    return await start_proxy()


@pytest.fixture
async def postgres_dsn() -> AsyncIterator[str]:
    """A PostgreSQL URL whose `search_path` is a schema of this test's own, dropped afterwards
    (the server comes from GINI_PROXY_TEST_POSTGRES_DSN: see tests/stores_support.py). Ask for
    it before `start_proxy`, so the proxy stops before its schema goes."""
    from .stores_support import postgres_schema  # here: only PostgreSQL tests load asyncpg

    async with postgres_schema() as dsn:
        yield dsn


USER = {"X-User-Id": "alice@example.com"}


async def paced_load(
    one: Callable[[int], Coroutine[Any, Any, None]], stop: asyncio.Event, every: float = 0.02
) -> None:
    """Start `one(n)` every `every` seconds (50/s by default) until `stop`, then wait for all."""
    tasks: list[asyncio.Task[None]] = []
    n = 0
    while not stop.is_set():
        tasks.append(asyncio.create_task(one(n)))
        n += 1
        await asyncio.sleep(every)  # paces: the load's rate is the point
    await asyncio.gather(*tasks)


class FakeClock:
    """A clock the test moves by hand (`clock.now += 5`)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def eventually_sync(
    check: Callable[[], bool], within: float = 10.0, what: str = "condition"
) -> None:
    """`eventually` for code outside an event loop (starting a server process in a fixture)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, f"{what} not met within {within} s"
        time.sleep(0.02)  # polls: the one sleep of every synchronous wait


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    within: float = 10.0,
    what: str = "condition",
    every: float = 0.02,
) -> float:
    """Wait until `check()` (sync or async) is true; fails after `within` seconds. Returns the
    seconds it took. The way tests wait for something to happen, instead of a fixed sleep: as
    fast as the machine allows, and as patient as a loaded one needs."""
    started = time.monotonic()
    while True:
        result = check()
        if result if isinstance(result, bool) else await result:
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"{what} not met within {within} s"
        await asyncio.sleep(every)  # polls: the one sleep of every wait on a condition
