"""Repeated failures are logged as episodes: a line when they start, at most one a minute while
they last, one when they end, with a count; connection failures name their address."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from proxy.errors import StoreUnavailable
from proxy.reporting.episodes import Episodes
from proxy.sandbox import GiniSimulator
from proxy.vending.stores import StoreOpenError
from proxy.vending.stores.cipher import Cipher
from proxy.vending.stores.postgres import PostgresStore

from .conftest import USER, StartProxy
from .relay_support import Relay, through
from .stores_support import STORE_KEY, postgres_schema
from .test_server import free_port

log = logging.getLogger("test.episodes")


def lines(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == name]


def test_an_episode_is_logged_at_start_once_a_minute_and_at_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    now = [1000.0]
    episodes = Episodes(log, interval=60, clock=lambda: now[0])
    for _ in range(100):  # 100 failures in 50 s: one line
        episodes.failed("db", "call", "call failed", {"address": "db:5432"})
        now[0] += 0.5
    assert [r.__dict__["episode"] for r in caplog.records] == ["started"]
    assert caplog.records[0].__dict__["address"] == "db:5432"
    now[0] += 10.0  # 60 s since the first line
    episodes.failed("db", "call", "call failed", {"address": "db:5432"})
    episodes.failed("db", "call", "call failed", {"address": "db:5432"})
    ongoing = caplog.records[-1]
    assert ongoing.__dict__["episode"] == "ongoing"
    assert ongoing.__dict__["failures"] == 101
    assert "100 more in 60 s" in ongoing.getMessage()
    assert len(caplog.records) == 2
    episodes.succeeded("other")  # another group: nothing ends
    assert episodes.active() == 1
    now[0] += 5
    episodes.succeeded("db")
    ended = caplog.records[-1]
    assert ended.levelno == logging.INFO
    assert ended.__dict__["episode"] == "ended"
    assert ended.__dict__["failures"] == 102
    assert ended.__dict__["seconds"] == 65.0
    assert ended.getMessage() == "works again after 102 failure(s) in 65 s: call failed"
    assert ended.__dict__["address"] == "db:5432"
    episodes.succeeded("db")  # no episode: no line
    episodes.failed("db", "call", "call failed")  # a new episode starts
    assert [r.__dict__["episode"] for r in caplog.records] == [
        "started", "ongoing", "ended", "started",
    ]  # fmt: skip


def test_kinds_are_separate_episodes(caplog: pytest.LogCaptureFixture) -> None:
    episodes = Episodes(log, clock=lambda: 0.0)
    for reason in ("dns", "connect", "dns"):
        episodes.failed("pay_api", reason, f"failed: {reason}")
    episodes.failed("user_center", "connect", "failed: connect")
    assert [r.getMessage() for r in caplog.records] == [
        "failed: dns", "failed: connect", "failed: connect",
    ]  # fmt: skip
    assert episodes.active("pay_api") == 2
    assert episodes.active() == 3


async def test_an_unreachable_gini_is_one_episode_naming_its_address(
    start_proxy: StartProxy, sim: GiniSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    target = urlsplit(sim.pay_api_url)
    gate = Relay(target.hostname or "127.0.0.1", target.port or 80)
    await gate.start()
    try:
        # The breaker is kept shut: this test is about the log lines of an outage.
        breaker = {"breaker": {"min_calls": 1000}}
        upstream = {"pay_api": f"http://127.0.0.1:{gate.port}", "protection": breaker}
        proxy = await start_proxy(upstream=upstream)
        await gate.refuse()  # Gini is down
        for _ in range(20):
            async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
                assert response.status == 503
        (record,) = lines(caplog, "proxy.upstream")
        assert record.__dict__["address"] == f"127.0.0.1:{gate.port}"
        assert f"(127.0.0.1:{gate.port})" in record.getMessage()
        assert record.__dict__["reason"] == "connect"
        await gate.restore()  # Gini is back: the episode ends, once
        for _ in range(3):
            async with proxy.client.get(proxy.url + "/documents", headers=USER) as response:
                assert response.status == 200
    finally:
        await gate.close()
    started, ended = lines(caplog, "proxy.upstream")
    assert started.__dict__["episode"] == "started"
    assert ended.__dict__["episode"] == "ended"
    assert ended.__dict__["failures"] == 20
    errors = proxy.metrics.registry.get_sample_value(
        "gini_proxy_upstream_errors_total", {"upstream": "pay_api", "reason": "connect"}
    )
    assert errors is not None
    assert errors >= 20  # every attempt counted (a GET may be resent)


@pytest.fixture
async def relay() -> AsyncIterator[tuple[Relay, str]]:
    async with postgres_schema() as dsn:
        parts = urlsplit(dsn)
        relay = Relay(parts.hostname or "127.0.0.1", parts.port or 5432)
        await relay.start()
        try:
            yield relay, dsn
        finally:
            await relay.close()


@pytest.mark.postgres
async def test_a_store_outage_is_one_episode_with_its_address(
    relay: tuple[Relay, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server, dsn = relay
    store = PostgresStore(through(dsn, server.port), Cipher(STORE_KEY), timeout=1.0)
    await store.open()
    try:
        await store.ping()
        caplog.clear()  # the new store's own startup warning is not part of the outage
        await server.refuse()
        for _ in range(10):
            with pytest.raises(StoreUnavailable):
                await store.ping()
        failures = lines(caplog, "proxy.store")
        assert [r.getMessage() for r in failures] == ["store call failed"]
        assert failures[0].__dict__["address"] == f"127.0.0.1:{server.port}"
        await server.restore()
        await store.ping()
        ended = lines(caplog, "proxy.store")[-1]
        assert ended.__dict__["episode"] == "ended"
        assert ended.__dict__["failures"] == 10
    finally:
        await store.close()


async def test_a_refused_store_at_startup_names_its_address() -> None:
    port = free_port()
    dsn = f"postgresql://gini:startup-pass-0b3@127.0.0.1:{port}/gini"
    store = PostgresStore(dsn, Cipher(STORE_KEY), timeout=1.0)
    with pytest.raises(StoreOpenError) as caught:
        await store.open()
    assert f"cannot open PostgreSQL store at 127.0.0.1:{port}: " in str(caught.value)
    assert "startup-pass-0b3" not in str(caught.value)
