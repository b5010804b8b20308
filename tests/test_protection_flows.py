"""`upstream.protection` through a running proxy in front of the simulator: pauses from
`Retry-After`, the in-flight bound and its queue, the breaker, resends of dropped GETs and the
retry budget, each under concurrent callers."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from typing import Any

from proxy.sandbox import GiniSimulator

from .conftest import USER, RunningProxy, StartProxy, eventually


async def get(proxy: RunningProxy, path: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
    method = kw.pop("method", "GET")
    headers = kw.pop("headers", USER)
    async with proxy.client.request(method, proxy.url + path, headers=headers, **kw) as answer:
        body = await answer.json(content_type=None) if answer.status != 200 else None
        return answer.status, dict(answer.headers), body


async def timed(
    proxy: RunningProxy, path: str, **kw: Any
) -> tuple[float, int, dict[str, str], Any]:
    started = time.monotonic()
    status, headers, body = await get(proxy, path, **kw)
    return time.monotonic() - started, status, headers, body


def pay_calls(sim: GiniSimulator, path: str, since: float = 0.0) -> list[float]:
    """When the Pay API received each call to `path` (after `since`)."""
    return [r.at for r in sim.state.requests if r.app == "pay" and r.path == path and r.at > since]


def sample(proxy: RunningProxy, name: str, **labels: str) -> float:
    value = proxy.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def derived(proxy: RunningProxy, user: str) -> tuple[int, Any]:
    url = proxy.url + "/_proxy/tokens/derived"
    async with proxy.client.post(url, headers={"X-User-Id": user}) as answer:
        return answer.status, await answer.json(content_type=None)


# -- pauses ------------------------------------------------------------------------------------


async def test_nothing_reaches_gini_during_a_pause(proxy: RunningProxy, sim: GiniSimulator) -> None:
    cached_status, cached = await derived(proxy, "cached@example.com")
    assert cached_status == 200
    sim.state.fail_next(1, status=429, app="pay", retry_after="3")
    status, headers, body = await get(proxy, "/documents")
    heard = time.monotonic()
    # The answer that carried Retry-After reaches its caller as Gini gave it.
    assert status == 429
    assert headers["Retry-After"] == "3"
    assert set(body) == {"message", "requestId"}
    assert sample(proxy, "gini_proxy_upstream_pause_seconds", upstream="pay_api") > 2

    # Concurrent callers in the window: each answered at once, Gini gets nothing.
    seen: list[tuple[float, int, dict[str, str], Any]] = []
    while time.monotonic() - heard < 2.3:  # the last batch, at most 0.5 s, ends before 3 s
        seen += await asyncio.gather(*(timed(proxy, f"/documents?n={n}") for n in range(10)))
    for seconds, status, headers, body in seen:
        assert status == 429
        assert body["error"] == "upstream_throttled"
        assert 1 <= int(headers["Retry-After"]) <= 3
        assert seconds < 0.5  # 100 ms on an idle machine; this one is shared
    latencies = sorted(s for s, *_ in seen)
    assert latencies[len(latencies) // 2] < 0.1
    # Tokens: a cached one and the User Center keep working; a new /login waits like the rest.
    status, again = await derived(proxy, "cached@example.com")
    assert (status, again["access_token"]) == (200, cached["access_token"])
    async with proxy.client.post(
        proxy.url + "/_proxy/tokens/anonymous", headers={"X-User-Id": "anon-1"}
    ) as answer:
        assert answer.status == 200
    status, refused = await derived(proxy, "new@example.com")
    assert (status, refused["error"]) == (429, "upstream_throttled")
    assert pay_calls(sim, "/documents", since=heard) == []
    assert pay_calls(sim, "/login", since=heard) == []
    shed = sample(proxy, "gini_proxy_upstream_shed_total", upstream="pay_api", reason="paused")
    assert shed == len(seen) + 1

    async def through() -> bool:
        return (await get(proxy, "/documents"))[0] == 200

    await eventually(through, within=5, every=0.1)
    first = min(pay_calls(sim, "/documents", since=heard))
    assert first - heard >= 2.9
    assert sample(proxy, "gini_proxy_upstream_pause_seconds", upstream="pay_api") == 0


async def test_a_503_with_an_http_date_pauses_with_503(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    sim.state.fail_next(
        1, status=503, app="pay", retry_after=formatdate(time.time() + 2, usegmt=True)
    )
    assert (await get(proxy, "/documents"))[0] == 503
    status, headers, body = await get(proxy, "/documents")
    assert (status, body["error"]) == (503, "upstream_throttled")
    assert 1 <= int(headers["Retry-After"]) <= 3
    assert sample(proxy, "gini_proxy_upstream_breaker_open", upstream="pay_api") == 0


# -- the in-flight bound -------------------------------------------------------------------------


async def test_calls_in_flight_are_bounded(start_proxy: StartProxy, sim: GiniSimulator) -> None:
    proxy = await start_proxy(upstream={"protection": {"max_in_flight": 4, "queue_seconds": 0.5}})
    answers = await asyncio.gather(
        *(timed(proxy, f"/_sandbox/echo?delay=2&n={n}") for n in range(12))
    )
    assert sim.state.max_in_flight == 4
    served = [a for a in answers if a[1] == 200]
    busy = [a for a in answers if a[1] == 503]
    assert (len(served), len(busy)) == (4, 8)
    for seconds, _, headers, body in busy:
        assert body["error"] == "upstream_busy"
        assert headers["Retry-After"] == "1"
        assert 0.45 <= seconds < 1.5  # shed once queue_seconds ran out, not after the slow calls
    assert sample(proxy, "gini_proxy_upstream_shed_total", upstream="pay_api", reason="busy") == 8


async def test_the_bound_holds_under_50_callers(
    start_proxy: StartProxy, sim: GiniSimulator
) -> None:
    proxy = await start_proxy(upstream={"protection": {"max_in_flight": 4, "queue_seconds": 30}})
    answers = await asyncio.gather(
        *(get(proxy, f"/_sandbox/echo?delay=0.05&n={n}") for n in range(50))
    )
    assert [a[0] for a in answers] == [200] * 50  # every caller waited its turn
    assert sim.state.max_in_flight == 4


async def test_a_caller_that_disconnects_leaves_the_queue(
    start_proxy: StartProxy, sim: GiniSimulator
) -> None:
    proxy = await start_proxy(upstream={"protection": {"max_in_flight": 1, "queue_seconds": 30}})
    guard = proxy.services.upstream.guards["pay_api"]
    slow = asyncio.create_task(get(proxy, "/_sandbox/echo?delay=3"))
    await eventually(lambda: sim.state.in_flight == 1)
    waiting = asyncio.create_task(get(proxy, "/_sandbox/echo"))
    await eventually(lambda: guard.status()["queued"] == 1)
    waiting.cancel()  # the caller goes away: its connection closes
    await asyncio.gather(waiting, return_exceptions=True)
    await eventually(lambda: guard.status()["queued"] == 0, within=2)
    assert sim.state.in_flight == 1  # the one in flight goes on
    assert (await slow)[0] == 200
    assert guard.status()["in_flight"] == 0


# -- the breaker ---------------------------------------------------------------------------------


async def test_the_breaker_opens_probes_once_and_closes(
    start_proxy: StartProxy, sim: GiniSimulator
) -> None:
    breaker = {"min_calls": 10, "open_seconds": 1, "failure_ratio": 0.5}
    proxy = await start_proxy(upstream={"protection": {"breaker": breaker}})
    sim.state.fail_next(10**6, status=503, app="pay")
    for n in range(10):
        assert (await get(proxy, f"/documents?n={n}"))[0] == 503
    opened = time.monotonic()
    assert len(pay_calls(sim, "/documents")) == 10
    assert sample(proxy, "gini_proxy_upstream_breaker_open", upstream="pay_api") == 1
    status, headers, body = await get(proxy, "/documents")
    assert (status, body["error"], headers["Retry-After"]) == (503, "upstream_unavailable", "1")
    await eventually(lambda: time.monotonic() - opened > 1.05, every=0.05)
    assert len(pay_calls(sim, "/documents")) == 10  # nothing while open
    # Open long enough: of many concurrent callers exactly one goes to Gini, and fails.
    answers = await asyncio.gather(*(get(proxy, f"/documents?p={n}") for n in range(8)))
    assert len(pay_calls(sim, "/documents")) == 11
    assert (
        sorted(a[2].get("error", "gini") for a in answers)
        == ["gini"] + ["upstream_unavailable"] * 7
    )
    # It opened again; once Gini is back, the next probe closes it.
    sim.state.fail_next(0)

    async def closed() -> bool:
        return (await get(proxy, "/documents"))[0] == 200

    await eventually(closed, within=5, every=0.1)
    assert sample(proxy, "gini_proxy_upstream_breaker_open", upstream="pay_api") == 0
    assert [(await get(proxy, "/documents"))[0] for _ in range(3)] == [200] * 3


# -- resends and the retry budget ----------------------------------------------------------------


async def test_a_dropped_get_is_sent_again_once(proxy: RunningProxy, sim: GiniSimulator) -> None:
    sim.state.fail_next(1, app="pay", drop=True)
    status, _, _ = await get(proxy, "/documents")
    assert status == 200
    assert len(pay_calls(sim, "/documents")) == 2
    assert (
        sample(proxy, "gini_proxy_upstream_retries_total", upstream="pay_api", result="sent") == 1
    )
    sim.state.fail_next(2, app="pay", drop=True)
    status, _, body = await get(proxy, "/documents")
    assert (status, body["error"]) == (502, "bad_gateway")  # once only
    assert len(pay_calls(sim, "/documents")) == 4


async def test_a_dropped_post_or_put_is_never_repeated(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    # aiohttp's own resend of dropped idempotent requests is off (a private switch: checked).
    assert proxy.services.upstream.session._retry_connection is False
    for method in ("POST", "PUT"):
        sim.state.fail_next(1, app="pay", drop=True)
        status, _, body = await get(
            proxy, "/documents", method=method, data=b"%PDF-1.4 upload", headers=USER
        )
        assert (status, body["error"]) == (502, "bad_gateway")
        assert len([r for r in sim.state.requests if r.method == method]) == 1


async def test_token_retries_stay_within_the_budget(
    start_proxy: StartProxy, sim: GiniSimulator
) -> None:
    # The breaker is kept out of the way: the budget alone must bound the calls.
    proxy = await start_proxy(upstream={"protection": {"breaker": {"min_calls": 1000}}})
    sim.state.fail_next(10**6, status=503, app="pay")
    answers = await asyncio.gather(*(derived(proxy, f"user-{n}@example.com") for n in range(30)))
    assert all(status == 503 for status, _ in answers)
    logins = len(pay_calls(sim, "/login"))
    assert 30 < logins <= 40  # 90 without a budget: every fetch tried 3 times
    over = sample(
        proxy, "gini_proxy_upstream_retries_total", upstream="pay_api", result="over_budget"
    )
    sent = sample(proxy, "gini_proxy_upstream_retries_total", upstream="pay_api", result="sent")
    assert sent == logins - 30
    assert over > 0


async def test_30_failing_token_fetches_make_at_most_40_calls(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    sim.state.fail_next(10**6, status=503, app="pay")
    answers = await asyncio.gather(*(derived(proxy, f"user-{n}@example.com") for n in range(30)))
    assert {status for status, _ in answers} == {503}
    assert 30 <= len(pay_calls(sim, "/login")) <= 40


async def test_a_token_fetch_does_not_retry_into_a_pause(
    proxy: RunningProxy, sim: GiniSimulator
) -> None:
    sim.state.fail_next(1, status=429, app="pay", retry_after="30")
    started = time.monotonic()
    status, body = await derived(proxy, "paused@example.com")
    assert (status, body["error"]) == (429, "upstream_throttled")
    assert time.monotonic() - started < 1  # no sleep through the pause
    assert len(pay_calls(sim, "/login")) == 1


async def test_status_shows_each_upstream(proxy: RunningProxy, sim: GiniSimulator) -> None:
    sim.state.fail_next(1, status=429, app="pay", retry_after="20")
    await get(proxy, "/documents")
    async with proxy.client.get(proxy.admin_url + "/status") as answer:
        status = await answer.json()
    protection = status["upstream_protection"]
    assert protection["pay_api"]["paused_seconds"] in (19, 20)
    assert protection["pay_api"]["breaker"] == "closed"
    assert protection["user_center"]["paused_seconds"] == 0
