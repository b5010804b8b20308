"""`max_buffered_bytes`: JSON bodies held for rewriting share one process-wide budget.

Past it, an answer waits briefly for room, then gets 503 `overloaded`; it is never relayed
unrewritten, and every way out gives its bytes back.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import Overloaded
from proxy.forwarding.budget import BufferBudget

from .conftest import USER, RunningProxy, StartProxy, config_data, eventually, examples, merge
from .test_server import free_port, spawn

PUBLIC = "http://proxy.test:8080"
BODY_BYTES = 300_000  # counted twice (as received and rewritten): two don't fit in 1 MiB


def document_list(origin: str, size: int) -> bytes:
    """A JSON listing of about `size` bytes, full of Gini URLs to rewrite."""
    item = {"id": "d" * 20, "_links": {"document": f"{origin}/documents/{'x' * 40}"}}
    one = len(json.dumps(item)) + 2
    return json.dumps({"documents": [item] * (size // one)}).encode()


@dataclass
class FakeGini:
    """A Pay API on loopback: `/list` answers a listing at once, `/held` sends its head and a
    first part, then the rest once `gate` is set; `/post` counts what arrives."""

    url: str = ""
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    posts: int = 0
    body: bytes = b""
    open_after: int = 0  # `/held` sets `gate` itself once this many requests have arrived
    arrived: int = 0

    async def listing(self, request: web.Request) -> web.Response:
        return web.Response(body=self.body, content_type="application/json")

    async def held(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(self.body)
        await response.prepare(request)
        cut = len(self.body) - 1000 if self.open_after else 1000
        await response.write(self.body[:cut])
        self.arrived += 1
        if self.arrived == self.open_after:
            self.gate.set()
        await self.gate.wait()
        await response.write(self.body[cut:])
        await response.write_eof()
        return response

    async def gzipped(self, request: web.Request) -> web.Response:
        """A small answer on the wire that inflates to the whole listing."""
        headers = {"Content-Encoding": "gzip"}
        body = gzip.compress(document_list(self.url, 2 * BODY_BYTES))
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def post(self, request: web.Request) -> web.Response:
        self.posts += 1
        await request.read()
        return web.json_response({"ok": True})


@pytest.fixture
async def gini() -> AsyncIterator[FakeGini]:
    fake = FakeGini()
    app = web.Application()
    app.router.add_get("/list", fake.listing)
    app.router.add_get("/held", fake.held)
    app.router.add_get("/gz", fake.gzipped)
    app.router.add_post("/post", fake.post)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    fake.body = document_list(fake.url, BODY_BYTES)
    yield fake
    fake.gate.set()
    await runner.cleanup()


async def small_budget_proxy(start_proxy: StartProxy, gini: FakeGini) -> RunningProxy:
    return await start_proxy(
        upstream={"pay_api": gini.url}, public_url=PUBLIC, max_buffered_bytes=1 << 20
    )


def budget_of(proxy: RunningProxy) -> BufferBudget:
    return proxy.services.forwarder.budget


async def fetch(proxy: RunningProxy, path: str, **kw: Any) -> tuple[int, Any, bytes]:
    async with proxy.client.request(
        kw.pop("method", "GET"), proxy.url + path, headers=USER, **kw
    ) as answer:
        return answer.status, answer.headers, await answer.read()


async def test_an_answer_waits_for_room_then_is_rewritten(
    start_proxy: StartProxy, gini: FakeGini
) -> None:
    proxy = await small_budget_proxy(start_proxy, gini)
    budget = budget_of(proxy)
    held = asyncio.ensure_future(fetch(proxy, "/held"))
    await eventually(lambda: _true(budget.used > 0))
    waiting = asyncio.ensure_future(fetch(proxy, "/list"))
    await eventually(lambda: _true(budget.waiting == 1))
    assert not waiting.done()
    gini.gate.set()  # the held answer completes and gives its bytes back
    for status, _, body in await asyncio.gather(held, waiting):
        assert status == 200
        assert gini.url.encode() not in body
        assert body.count(PUBLIC.encode()) == gini.body.count(gini.url.encode()) > 0
    await eventually(lambda: _true(budget.used == 0 and budget.waiting == 0))


async def test_no_room_in_time_is_503_overloaded_never_unrewritten(
    start_proxy: StartProxy, gini: FakeGini
) -> None:
    proxy = await small_budget_proxy(start_proxy, gini)
    budget = budget_of(proxy)
    held = asyncio.ensure_future(fetch(proxy, "/held"))
    await eventually(lambda: _true(budget.used > 0))
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, headers, body = await fetch(proxy, "/list")
    waited = loop.time() - started
    assert status == 503
    error = json.loads(body)
    assert error["error"] == "overloaded"
    assert headers["Retry-After"] == "1"
    assert headers["X-Request-Id"] == error["requestId"]
    assert waited >= 0.9  # it waited for room before refusing
    # A JSON request body to rewrite is refused the same way, unread, before Gini sees it.
    big = document_list(PUBLIC, BODY_BYTES)
    status, headers, body = await _post(proxy, big)
    assert status == 503
    assert json.loads(body)["error"] == "overloaded"
    assert headers["Connection"] == "close"
    assert gini.posts == 0
    gini.gate.set()
    assert (await held)[0] == 200
    await eventually(lambda: _true(budget.used == 0 and budget.waiting == 0))
    status, _, _ = await _post(proxy, big)  # with room again, it goes through
    assert status == 200
    assert gini.posts == 1
    assert budget.used == 0


async def test_a_compressed_answer_counts_as_what_it_inflates_to(
    start_proxy: StartProxy, gini: FakeGini
) -> None:
    proxy = await small_budget_proxy(start_proxy, gini)
    budget = budget_of(proxy)
    assert len(gzip.compress(document_list(gini.url, 2 * BODY_BYTES))) < 64 * 1024  # small
    held = asyncio.ensure_future(fetch(proxy, "/held"))
    await eventually(lambda: _true(budget.used > 0))
    status, _, body = await fetch(proxy, "/gz")
    assert status == 503
    assert json.loads(body)["error"] == "overloaded"
    gini.gate.set()
    assert (await held)[0] == 200
    status, headers, body = await fetch(proxy, "/gz")
    assert status == 200
    assert "Content-Encoding" not in headers
    assert len(body) > 2 * BODY_BYTES - 1000
    assert gini.url.encode() not in body
    await eventually(lambda: _true(budget.used == 0 and budget.waiting == 0))


async def test_a_caller_leaving_while_waiting_holds_nothing(
    start_proxy: StartProxy, gini: FakeGini
) -> None:
    proxy = await small_budget_proxy(start_proxy, gini)
    budget = budget_of(proxy)
    held = asyncio.ensure_future(fetch(proxy, "/held"))
    await eventually(lambda: _true(budget.used > 0))
    async with aiohttp.ClientSession() as other:
        leaving = asyncio.ensure_future(other.get(proxy.url + "/list", headers=USER))
        await eventually(lambda: _true(budget.waiting == 1))
        leaving.cancel()
    await eventually(lambda: _true(budget.waiting == 0))
    gini.gate.set()
    assert (await held)[0] == 200
    await eventually(lambda: _true(budget.used == 0))


async def test_a_caller_leaving_while_its_answer_is_held_gives_the_bytes_back(
    start_proxy: StartProxy, gini: FakeGini
) -> None:
    proxy = await small_budget_proxy(start_proxy, gini)
    budget = budget_of(proxy)
    async with aiohttp.ClientSession() as other:
        leaving = asyncio.ensure_future(other.get(proxy.url + "/held", headers=USER))
        await eventually(lambda: _true(budget.used > 0))
        leaving.cancel()
    # Gini's answer never completes (the gate stays shut): only the caller's leaving ends it.
    await eventually(lambda: _true(budget.used == 0))
    assert not gini.gate.is_set()


async def _post(proxy: RunningProxy, body: bytes) -> tuple[int, Any, bytes]:
    headers = {**USER, "Content-Type": "application/json"}
    async with proxy.client.post(proxy.url + "/post", data=body, headers=headers) as answer:
        return answer.status, answer.headers, await answer.read()


async def _true(value: bool) -> bool:
    return value


# The budget on its own: what it grants, in which order, and that it always comes back to zero.


async def test_waiters_are_served_in_order_and_time_out_with_retry_after() -> None:
    budget = BufferBudget(100, wait=5)
    assert budget.take_now(60)
    first = asyncio.ensure_future(budget.take(50))
    second = asyncio.ensure_future(budget.take(10))  # fits, but waits its turn
    await asyncio.sleep(0)
    assert budget.waiting == 2
    assert not first.done()
    assert not second.done()
    budget.give(60)
    await asyncio.gather(first, second)
    assert budget.used == 60
    budget.give(60)
    quick = BufferBudget(10, wait=0.05)
    assert quick.take_now(10)
    with pytest.raises(Overloaded) as refused:
        await quick.take(1)
    assert refused.value.headers == {"Retry-After": "1"}
    assert quick.waiting == 0
    quick.give(10)
    assert quick.used == 0


@settings(max_examples=examples(200))
@given(
    st.lists(
        st.tuples(st.integers(1, 120), st.sampled_from(["keep", "cancel", "timeout"])),
        max_size=12,
    )
)
def test_property_the_budget_never_overflows_and_returns_to_zero(
    plan: list[tuple[int, str]],
) -> None:
    async def run() -> None:
        budget = BufferBudget(100, wait=0.02)
        peak = 0

        async def holder(size: int, how: str) -> None:
            nonlocal peak
            size = min(size, budget.limit)
            try:
                await budget.take(size)
            except Overloaded:
                return
            peak = max(peak, budget.used)
            try:
                await asyncio.sleep(0.03 if how == "timeout" else 0)  # slow peer: holds its bytes
            finally:
                budget.give(size)

        tasks = [asyncio.ensure_future(holder(size, how)) for size, how in plan]
        await asyncio.sleep(0)
        for task, (_, how) in zip(tasks, plan, strict=True):
            if how == "cancel":
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert peak <= budget.limit
        assert budget.used == 0
        assert budget.waiting == 0

    asyncio.run(run())


# Memory, measured on a real proxy process.


@pytest.mark.slow
@pytest.mark.parametrize(
    ("answers", "size", "bound_mib"),
    [
        # The target: 150 answers of 0.7 MB in 32 MiB grow the process by under 120 MiB. On a
        # loaded 2-core VM this measured 97-104 MiB (and 109-113 MiB without a budget: at this
        # size most of the growth is what the HTTP client reads ahead on each connection).
        (150, 700_000, 120),
        # The burst the budget was made for: 200 answers of 1 MB grew the process by 216 MiB
        # without it, and by 132 MiB with it.
        (200, 1_000_000, 170),
    ],
)
async def test_concurrent_rewrites_stay_within_the_memory_bound(
    gini: FakeGini, tmp_path: Path, sim: Any, answers: int, size: int, bound_mib: int
) -> None:
    # Every answer is all but complete before any may finish, as when Gini serves a burst of
    # large listings: without a budget, the proxy would hold all 150 at once.
    gini.body = document_list(gini.url, size)
    gini.open_after = answers
    listen, admin = free_port(), free_port()
    data = merge(
        config_data(sim, tmp_path),
        {
            "listen": f"127.0.0.1:{listen}",
            "admin_listen": f"127.0.0.1:{admin}",
            "public_url": PUBLIC,
            "upstream": {"pay_api": gini.url, "timeout_seconds": 30},
            "max_buffered_bytes": 32 << 20,
            "anonymous": None,
            "store": None,
        },
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    proc = await spawn("serve", "--config", str(config))
    try:
        await proc.wait_for(rb"gini-auth-proxy ready")
        url = f"http://127.0.0.1:{listen}"
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(path: str = "/held") -> tuple[int, bytes]:
                async with session.get(url + path, headers=USER) as answer:
                    return answer.status, await answer.read()

            for _ in range(3):  # warm up: imports, pools and first allocations done
                assert (await one("/list"))[0] == 200
            before = _rss(proc.process.pid, "VmRSS")
            results = await asyncio.gather(*(one() for _ in range(answers)))
            peak = _rss(proc.process.pid, "VmHWM")
        growth = (peak - before) / (1 << 20)
        statuses = [status for status, _ in results]
        assert set(statuses) <= {200, 503}, statuses
        for status, body in results:
            if status == 200:  # never relayed unrewritten
                assert gini.url.encode() not in body
            else:
                assert json.loads(body)["error"] == "overloaded"
        print(f"RSS growth {growth:.0f} MiB; {statuses.count(503)} of {answers} got 503")
        assert growth < bound_mib, f"RSS grew by {growth:.0f} MiB"
    finally:
        proc.process.kill()
        await proc.process.wait()


def _rss(pid: int, field_name: str) -> int:
    """A memory figure of the process, in bytes, from /proc (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field_name}:\s+(\d+) kB", status, re.MULTILINE)
    assert found is not None, status
    return int(found.group(1)) * 1024
