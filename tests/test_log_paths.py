"""Every code path that logs, driven end to end: lines are JSON and carry no secret."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from proxy.config import Config
from proxy.log import Redactor, configure_logging
from proxy.sandbox import GiniSimulator
from proxy.web.accesslog import AccessLog
from proxy.web.context import RequestContext

from .conftest import (
    CLIENT_SECRET,
    HMAC_KEY,
    INBOUND_KEY,
    STORE_KEY,
    RunningProxy,
    StartProxy,
    eventually,
)

ALICE = "alice.secret-person@example.com"


def install(stream: io.StringIO, config: Config) -> None:
    configure_logging("debug", Redactor(config.secrets()), stream)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def call(proxy: RunningProxy, method: str, path: str, user: str = ALICE, **kw: Any) -> int:
    headers = {"X-User-Id": user, "X-Proxy-Key": INBOUND_KEY, **kw.pop("headers", {})}
    async with proxy.client.request(method, proxy.url + path, headers=headers, **kw) as response:
        await response.read()
        return response.status


async def test_access_log_fields(proxy: RunningProxy, log_stream: io.StringIO) -> None:
    install(log_stream, proxy.config)
    await call(proxy, "GET", "/documents", headers={"X-Request-Id": "req-1"})
    assert not [e for e in lines(log_stream) if e["logger"] == "proxy.access"]  # buffered
    proxy.services.access_log.flush()
    (entry,) = [e for e in lines(log_stream) if e["logger"] == "proxy.access"]
    assert entry["message"] == "request"
    assert entry["level"] == "info"
    assert entry["timestamp"].endswith("Z")
    assert entry["request_id"] == "req-1"
    assert entry["gini_request_id"]
    assert (entry["method"], entry["route"], entry["status"]) == ("GET", "/documents", 200)
    assert entry["duration_ms"] >= entry["upstream_ms"] > 0
    assert entry["bytes_out"] > 0


async def test_access_log_can_be_switched_off_or_sampled(
    start_proxy: StartProxy, log_stream: io.StringIO
) -> None:
    quiet = await start_proxy(logging={"access_log": False})
    install(log_stream, quiet.config)
    for _ in range(20):
        await call(quiet, "GET", "/documents")
    quiet.services.access_log.flush()
    assert not [e for e in lines(log_stream) if e["logger"] == "proxy.access"]
    sampled = await start_proxy(logging={"access_log_sample_rate": 0.25})
    for _ in range(400):
        await call(sampled, "GET", "/_sandbox/echo")
    # The flush timer writes the buffer out on its own: wait until it has.
    await eventually(lambda: not sampled.services.access_log._lines, what="flush")
    count = len([e for e in lines(log_stream) if e["logger"] == "proxy.access"])
    assert 50 < count < 150


async def test_no_secret_reaches_any_log_line(
    start_proxy: StartProxy, sim: GiniSimulator, log_stream: io.StringIO, unused_tcp_port: int
) -> None:
    proxy = await start_proxy(inbound_auth={"keys": INBOUND_KEY})
    install(log_stream, proxy.config)
    tokens: list[str] = []

    async def vend(path: str, user: str = ALICE) -> None:
        async with proxy.client.post(
            proxy.url + path, headers={"X-User-Id": user, "X-Proxy-Key": INBOUND_KEY}
        ) as response:
            if response.status == 200:
                tokens.append((await response.json())["access_token"])

    # Flow 1, token vending, user re-creation, Gini refusing and failing, bad input.
    await call(proxy, "GET", "/documents", headers={"Authorization": f"Bearer {CLIENT_SECRET}"})
    await vend("/_proxy/tokens/derived")
    await vend("/_proxy/tokens/anonymous")
    passwords = [user.password for user in sim.state.users.values()]
    sim.state.delete_user(sim.state.user_emails()[0])
    proxy.services.token_caches["anonymous"].forget(proxy.services.deriver(ALICE))
    await vend("/_proxy/tokens/anonymous")
    await call(proxy, "GET", "/documents", headers={"X-Proxy-Key": "wrong-key-0000000000"})
    await call(proxy, "GET", "/documents", user="x" * 300)
    await call(proxy, "GET", "/_sandbox/malformed")
    sim.state.fail_next(5, status=503)
    await call(proxy, "GET", "/documents")
    await vend("/_proxy/tokens/derived", user="bob.other-person")
    sim.state.fail_next(0)
    sim.state.reject_client = True
    proxy.services.token_caches["derived"].forget(proxy.services.deriver(ALICE))
    await vend("/_proxy/tokens/derived")
    # An unexpected exception whose text carries secrets and the caller's id.
    original = proxy.services.deriver

    def explode(user_id: str) -> str:
        raise RuntimeError(f"boom for {user_id} with {CLIENT_SECRET} and Bearer {tokens[0]}")

    proxy.services.caller.deriver = explode  # type: ignore[assignment]
    assert await call(proxy, "GET", "/documents") == 500
    proxy.services.caller.deriver = original
    # The store failing, a caller going away, and shutdown.
    assert proxy.services.store is not None
    await proxy.services.store.close()
    await vend("/_proxy/tokens/anonymous", user="carol.third-person")
    with pytest.raises(asyncio.TimeoutError):
        await call(proxy, "GET", "/_sandbox/echo?delay=5", timeout=0.2)
    # The cut request is logged when its handler ends, just after the client gave up.
    await proxy.services.lifecycle.wait_idle(5.0)
    proxy.services.access_log.flush()

    text = log_stream.getvalue()
    entries = lines(log_stream)  # every line is one JSON object
    assert {e["logger"] for e in entries} >= {
        "proxy.access",
        "proxy.errors",
        "proxy.gini",
        "proxy.anonymous",
    }
    assert any("exception" in e for e in entries)
    passwords += [user.password for user in sim.state.users.values()]
    users = [ALICE, "bob.other-person", "carol.third-person"]
    secrets = [CLIENT_SECRET, HMAC_KEY, STORE_KEY, INBOUND_KEY, *users, *tokens, *passwords]
    assert len(tokens) >= 3
    for secret in secrets:
        assert secret not in text, secret
    assert "x" * 300 not in text


async def test_access_lines_never_echo_a_secret_sent_as_request_id(
    proxy: RunningProxy, log_stream: io.StringIO
) -> None:
    install(log_stream, proxy.config)
    await call(proxy, "GET", "/documents", headers={"X-Request-Id": CLIENT_SECRET})
    proxy.services.access_log.flush()
    (entry,) = [e for e in lines(log_stream) if e["logger"] == "proxy.access"]
    assert entry["request_id"] == "[REDACTED]"


async def test_access_lines_hide_secrets_in_every_field_others_choose(
    log_stream: io.StringIO,
) -> None:
    """The request id (the caller's), Gini's request id and the route template (config) are
    where a secret could get in; so is a secret a reload adds later."""
    configure_logging("info", Redactor([]), log_stream)
    access = AccessLog((CLIENT_SECRET,))
    request = make_mocked_request("GET", "/documents")
    rotated = "rotated-" + HMAC_KEY
    for request_id, gini_id, route in [
        (CLIENT_SECRET, None, "/documents"),
        ("req-1", CLIENT_SECRET, "/documents"),
        ("req-2", "gini-2", f"/x/{CLIENT_SECRET}/y"),
        ("req-3", None, f"/x/{CLIENT_SECRET}/y"),  # the route, remembered, still hidden
    ]:
        ctx = RequestContext(request_id, route)
        ctx.gini_request_id = gini_id
        access.write(request, ctx, 200, 0.001)
    access.secrets = (*access.secrets, rotated)
    for request_id, route in [(rotated, "/documents"), ("req-5", f"/{rotated}")]:
        access.write(request, RequestContext(request_id, route), 200, 0.001)
    access.flush()
    text = log_stream.getvalue()
    entries = lines(log_stream)
    assert len(entries) == 6
    assert CLIENT_SECRET not in text
    assert rotated not in text
    assert [e["request_id"] for e in entries] == [
        "[REDACTED]", "req-1", "req-2", "req-3", "[REDACTED]", "req-5",
    ]  # fmt: skip
    assert entries[1]["gini_request_id"] == "[REDACTED]"
    assert entries[2]["gini_request_id"] == "gini-2"
    assert entries[3]["route"] == "/x/[REDACTED]/y"
    assert entries[5]["route"] == "/[REDACTED]"


async def test_no_access_lines_above_info(proxy: RunningProxy, log_stream: io.StringIO) -> None:
    configure_logging("warning", Redactor(proxy.config.secrets()), log_stream)
    await call(proxy, "GET", "/documents")
    proxy.services.access_log.flush()
    assert log_stream.getvalue() == ""
