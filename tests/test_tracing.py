"""Traces (proxy/telemetry/tracing.py, web/telemetry.py, the client spans in upstream.py)
exported to a real OTLP/HTTP receiver on loopback, through real requests to the simulator."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

from proxy.commands.doctor import Doctor
from proxy.config import build_config
from proxy.config.reader import ConfigError
from proxy.identity import derive_identifier
from proxy.metrics import Metrics
from proxy.sandbox import GiniSimulator
from proxy.telemetry.spans import SAMPLED as SAMPLED_FLAGS
from proxy.telemetry.spans import SCOPE_NAME, Recorder
from proxy.telemetry.tracing import decide, parse_traceparent

from .conftest import CLIENT_SECRET, HMAC_KEY, RunningProxy, StartProxy, eventually, examples
from .otlp_receiver import Receiver, otlp_receiver

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SAMPLED = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
UNSAMPLED = f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"
ALICE = "alice.traced@example.com"
INBOUND = "tracing-test-inbound-key-0123"
COLLECTOR_TOKEN = "collector-token-5d1e9a"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with otlp_receiver() as running:
        yield running


def traced(start_proxy: StartProxy, receiver: Receiver, **tracing: Any) -> Any:
    os.environ["TEST_COLLECTOR_TOKEN"] = COLLECTOR_TOKEN
    return start_proxy(
        tracing={
            "otlp_endpoint": receiver.url,
            "headers": {"Authorization": {"env": "TEST_COLLECTOR_TOKEN"}},
            "service_name": "proxy-under-test",
            **tracing,
        },
        inbound_auth={"keys": f"tracer:{INBOUND}"},
    )


async def send(
    proxy: RunningProxy, method: str, path: str, user: str = ALICE, **headers: str
) -> tuple[int, bytes]:
    headers = {"X-Proxy-Key": INBOUND, "X-User-Id": user, **headers}
    async with proxy.client.request(method, proxy.url + path, headers=headers) as response:
        return response.status, await response.read()


def gini_headers(sim: GiniSimulator) -> dict[str, str]:
    (last,) = [r for r in sim.state.requests_of("pay") if r.path == "/documents"][-1:]
    return {name.lower(): value for name, value in last.headers}


async def test_a_sampled_caller_gets_a_server_span_with_a_client_span_under_it(
    start_proxy: StartProxy, receiver: Receiver, sim: GiniSimulator
) -> None:
    proxy = await traced(start_proxy, receiver, sample_ratio=0)
    status, _ = await send(proxy, "GET", "/documents", traceparent=SAMPLED, tracestate="k=v")
    assert status == 200
    await eventually(lambda: len(receiver.of_trace(CALLER_TRACE)) == 2, within=15)
    server = next(s for s in receiver.of_trace(CALLER_TRACE) if s.kind == "SERVER")
    client = next(s for s in receiver.of_trace(CALLER_TRACE) if s.kind == "CLIENT")
    assert server.name == "GET /documents"
    assert server.parent_span_id == CALLER_SPAN
    assert server.attributes == {
        "http.request.method": "GET",
        "http.route": "/documents",
        "http.response.status_code": 200,
    }
    assert client.parent_span_id == server.span_id
    assert client.attributes == {
        "http.request.method": "GET",
        "gini.upstream": "pay_api",
        "server.address": "127.0.0.1",
        "http.response.status_code": 200,
    }
    assert (server.service, server.error, client.error) == ("proxy-under-test", False, False)
    assert receiver.headers[0]["Authorization"] == COLLECTOR_TOKEN
    # Gini sees neither the caller's trace context nor ours (propagate_to_gini is off).
    seen = gini_headers(sim)
    assert "traceparent" not in seen
    assert "tracestate" not in seen


async def test_propagate_to_gini_sends_our_client_span_as_the_parent(
    start_proxy: StartProxy, receiver: Receiver, sim: GiniSimulator
) -> None:
    proxy = await traced(start_proxy, receiver, sample_ratio=0, propagate_to_gini=True)
    assert (await send(proxy, "GET", "/documents", traceparent=SAMPLED))[0] == 200
    await eventually(lambda: len(receiver.of_trace(CALLER_TRACE)) == 2, within=15)
    client = next(s for s in receiver.of_trace(CALLER_TRACE) if s.kind == "CLIENT")
    assert gini_headers(sim)["traceparent"] == f"00-{CALLER_TRACE}-{client.span_id}-01"
    # Unsampled: no span, and nothing to propagate.
    assert (await send(proxy, "GET", "/documents", traceparent=UNSAMPLED))[0] == 200
    assert "traceparent" not in gini_headers(sim)


async def test_unsampled_requests_export_nothing(
    start_proxy: StartProxy, receiver: Receiver
) -> None:
    proxy = await traced(start_proxy, receiver, sample_ratio=0)
    for headers in ({}, {"traceparent": UNSAMPLED}, {"traceparent": "garbage"}):
        for _ in range(10):
            assert (await send(proxy, "GET", "/documents", **headers))[0] == 200
    # A caller's unsampled decision is followed even at ratio 1.
    always = await traced(start_proxy, receiver, sample_ratio=1)
    assert (await send(always, "GET", "/documents", traceparent=UNSAMPLED))[0] == 200
    marker = "0af7651916cd43dd8448eb211c80319c"
    marked = f"00-{marker}-{CALLER_SPAN}-01"
    assert (await send(proxy, "GET", "/documents", traceparent=marked))[0] == 200
    await eventually(lambda: len(receiver.of_trace(marker)) == 2, within=15)
    for running in (proxy, always):
        assert running.services.tracing is not None
        await running.services.tracing.close()  # exports whatever is still queued
    assert {span.trace_id for span in receiver.spans} == {marker}


async def test_ratio_one_traces_token_flows_and_store_calls_without_secrets(
    start_proxy: StartProxy, receiver: Receiver, tmp_path: Path
) -> None:
    proxy = await traced(start_proxy, receiver, sample_ratio=1)
    tokens = []
    for route in ("/_proxy/tokens/derived", "/_proxy/tokens/anonymous"):
        status, body = await send(proxy, "POST", route)
        assert status == 200
        tokens.append(json.loads(body)["access_token"])
    planted = {"Authorization": "Bearer planted", "Cookie": "session=planted"}
    assert (await send(proxy, "GET", "/documents", **planted))[0] == 200

    def servers() -> list[str]:
        return sorted(s.name for s in receiver.spans if s.kind == "SERVER")

    await eventually(lambda: len(servers()) == 3, within=15)
    anonymous = next(s for s in receiver.spans if s.name == "POST /_proxy/tokens/anonymous")
    under = [s for s in receiver.of_trace(anonymous.trace_id) if s.span_id != anonymous.span_id]

    def names(kind: str) -> list[str]:
        return sorted(
            f"{s.name} {s.attributes.get('gini.upstream', '')}".strip()
            for s in under
            if s.kind == kind
        )

    # The client token (GET), the user's creation and its login: all at the User Center.
    assert names("CLIENT") == ["GET user_center", "POST user_center", "POST user_center"]
    assert {"store.get", "store.claim", "store.activate"} <= set(names("INTERNAL"))
    derived = next(s for s in receiver.spans if s.name == "POST /_proxy/tokens/derived")
    (login,) = [s for s in receiver.of_trace(derived.trace_id) if s.kind == "CLIENT"]
    assert login.parent_span_id == derived.span_id
    assert (login.name, login.attributes["gini.upstream"]) == ("POST", "pay_api")  # /login
    # Nothing the proxy exported holds a secret, a token, the user id or its identifier.
    exported = b"".join(receiver.raw)
    identifier = derive_identifier(HMAC_KEY.encode(), ALICE)
    for planted in (ALICE, identifier, CLIENT_SECRET, HMAC_KEY, INBOUND, "planted", *tokens):
        assert planted.encode() not in exported, planted
    assert COLLECTOR_TOKEN.encode() not in exported


async def test_the_audit_record_names_the_trace(
    start_proxy: StartProxy, receiver: Receiver, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    proxy = await start_proxy(
        tracing={"otlp_endpoint": receiver.url, "sample_ratio": 0},
        audit={"path": str(audit)},
    )
    async with proxy.client.get(
        proxy.url + "/documents", headers={"X-User-Id": ALICE, "traceparent": UNSAMPLED}
    ) as response:
        assert response.status == 200
    async with proxy.client.get(proxy.url + "/documents", headers={"X-User-Id": ALICE}) as r:
        assert r.status == 200
    await eventually(lambda: audit.read_text().count("\n") == 2, within=5)  # one batch
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["trace_id"] for r in records] == [CALLER_TRACE, None]


async def test_a_collector_that_is_down_never_slows_or_fails_a_request(
    start_proxy: StartProxy, unused_tcp_port: int
) -> None:
    proxy = await start_proxy(
        tracing={
            "otlp_endpoint": f"http://127.0.0.1:{unused_tcp_port}/v1/traces",
            "sample_ratio": 1,
        }
    )
    started = time.monotonic()
    results = await asyncio.gather(
        *(
            proxy.client.get(proxy.url + "/documents", headers={"X-User-Id": ALICE})
            for _ in range(50)
        )
    )
    assert {r.status for r in results} == {200}
    for r in results:
        r.release()
    assert time.monotonic() - started < 10  # an export that waits would take 5 s per batch

    def dropped() -> float:
        return proxy.metrics.registry.get_sample_value("gini_proxy_trace_spans_dropped_total") or 0

    await eventually(lambda: dropped() >= 100, within=30, what="dropped spans counted")


def test_traceparent_parsing() -> None:
    assert parse_traceparent([SAMPLED]) == (CALLER_TRACE, CALLER_SPAN, True, "00")
    assert parse_traceparent([UNSAMPLED]) == (CALLER_TRACE, CALLER_SPAN, False, "00")
    assert parse_traceparent([SAMPLED + "-future"]) is None  # version 00 is exactly 55 chars
    assert parse_traceparent([SAMPLED.replace("00-", "01-", 1) + "-more"]) is not None
    for bad in (
        [],
        [SAMPLED, SAMPLED],  # two: which one a hop in front read is unknown
        [SAMPLED.replace("00-", "ff-", 1)],
        [f"00-{'0' * 32}-{CALLER_SPAN}-01"],
        [f"00-{CALLER_TRACE}-{'0' * 16}-01"],
        [SAMPLED.upper()],
    ):
        assert parse_traceparent(bad) is None, bad


@settings(max_examples=examples(300))
@given(text=st.text(max_size=80), ratio=st.floats(0, 1), draw=st.floats(0, 1, exclude_max=True))
def test_any_header_parses_or_is_ignored_and_sampling_follows_the_parent(
    text: str, ratio: float, draw: float
) -> None:
    parent = parse_traceparent([text])
    if parent is None:
        assert decide(None, ratio, lambda: draw) == (draw < ratio)
    else:
        assert text.strip()[3:35] == parent[0]
        assert decide(parent, ratio, lambda: draw) == parent[2]


async def test_doctor_reaches_the_collector(
    start_proxy: StartProxy, receiver: Receiver, unused_tcp_port: int
) -> None:
    proxy = await traced(start_proxy, receiver)
    lines: list[str] = []
    assert await Doctor(proxy.config, lines.append).run(), lines
    (line,) = [line for line in lines if "trace collector" in line]
    assert line.startswith("[ ok ]")
    assert "accepts an export (200)" in line
    assert receiver.headers[-1]["Authorization"] == COLLECTOR_TOKEN
    assert receiver.spans == []  # an empty export: nothing shows up as a span
    tracing = proxy.config.tracing
    assert tracing is not None
    down = f"http://127.0.0.1:{unused_tcp_port}/v1/traces"
    config = dataclasses.replace(
        proxy.config, tracing=dataclasses.replace(tracing, otlp_endpoint=down)
    )
    lines.clear()
    assert not await Doctor(config, lines.append).run()
    (line,) = [line for line in lines if "trace collector" in line]
    assert line.startswith("[FAIL]")
    assert "cannot be reached" in line
    assert COLLECTOR_TOKEN not in "\n".join(lines)


def test_check_config_validates_tracing() -> None:
    base = {"client": {"id": "c", "secret": CLIENT_SECRET}, "identity": {"hmac_key": HMAC_KEY}}
    good = "http://collector:4318/v1/traces"
    for tracing, path, words in (
        ({}, "tracing.otlp_endpoint", "is required"),
        ({"otlp_endpoint": "collector:4318"}, "tracing.otlp_endpoint", "http://"),
        ({"otlp_endpoint": "http://u:p@c:4318/"}, "tracing.otlp_endpoint", "credentials"),
        ({"otlp_endpoint": good, "sample_ratio": 1.5}, "tracing.sample_ratio", "between"),
        ({"otlp_endpoint": good, "headers": {"Bad Name": "x"}}, "tracing.headers.Bad Name", ""),
        (
            {"otlp_endpoint": good, "headers": {"X-Key": {"env": "NOPE"}}},
            "tracing.headers.X-Key",
            "NOPE",
        ),
        ({"otlp_endpoint": good, "service_name": "a b"}, "tracing.service_name", "A-Z"),
        ({"otlp_endpoint": good, "propagate_to_gini": "yes"}, "tracing.propagate_to_gini", "true"),
        ({"otlp_endpoint": good, "extra": 1}, "tracing.extra", "unknown"),
    ):
        with pytest.raises(ConfigError) as caught:
            build_config({**base, "tracing": tracing}, {}, Path("/"))
        assert any(p.startswith(f"{path}:") and words in p for p in caught.value.problems), (
            tracing,
            caught.value.problems,
        )
    config = build_config(
        {**base, "tracing": {"otlp_endpoint": good, "headers": {"X-Key": {"env": "K"}}}},
        {"K": "collector-secret-value"},
        Path("/"),
    )
    assert config.tracing is not None
    assert (config.tracing.sample_ratio, config.tracing.propagate_to_gini) == (0.05, False)
    assert config.tracing.service_name == "gini-auth-proxy"
    assert "collector-secret-value" in config.secrets()  # redacted from every log line


async def test_exemplars_name_the_trace_in_openmetrics(
    start_proxy: StartProxy, receiver: Receiver
) -> None:
    proxy = await traced(start_proxy, receiver, sample_ratio=0)
    assert (await send(proxy, "GET", "/documents"))[0] == 200  # unsampled: no exemplar
    assert (await send(proxy, "GET", "/documents", traceparent=SAMPLED))[0] == 200

    async def scrape(accept: str) -> str:
        async with proxy.client.get(proxy.admin_url + "/metrics", headers={"Accept": accept}) as r:
            assert r.status == 200
            return str(await r.text())

    text = await scrape("application/openmetrics-text; version=1.0.0; charset=utf-8")
    exemplar = f'# {{trace_id="{CALLER_TRACE}"}}'
    request_lines = [
        line
        for line in text.splitlines()
        if line.startswith("gini_proxy_request_duration_seconds_bucket{") and exemplar in line
    ]
    upstream_lines = [
        line
        for line in text.splitlines()
        if line.startswith("gini_proxy_upstream_request_duration_seconds_bucket{")
        and exemplar in line
    ]
    assert len(request_lines) == 1, text
    assert 'route="/documents"' in request_lines[0]
    assert len(upstream_lines) == 1
    assert 'upstream="pay_api"' in upstream_lines[0]
    assert text.count("trace_id=") == 2  # the unsampled request left none
    # The classic text format has no exemplars, and still parses as before.
    assert "trace_id" not in await scrape("text/plain")


def test_an_exemplar_sits_on_the_bucket_its_value_was_counted_in() -> None:
    metrics = Metrics()
    metrics.observe_request("GET", "/documents", 200, 0.003)
    metrics.hot.exemplar_request("GET", "/documents", 0.003, CALLER_TRACE)
    metrics.hot.exemplar_request("GET", "/never-observed", 0.003, CALLER_TRACE)  # no series
    metrics.observe_upstream("pay_api", 0.001)
    metrics.hot.exemplar_upstream("pay_api", 0.001, CALLER_TRACE)
    found = {
        (sample.name, sample.labels.get("route") or sample.labels["upstream"], sample.labels["le"])
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.exemplar is not None
    }
    assert found == {
        ("gini_proxy_request_duration_seconds_bucket", "/documents", "0.005"),
        ("gini_proxy_upstream_request_duration_seconds_bucket", "pay_api", "0.001"),
    }


def test_the_sdk_surface_the_span_recorder_uses() -> None:
    # spans.Recorder builds the SDK's ReadableSpan itself instead of going through a tracer.
    # If an SDK release changes that constructor or what its OTLP encoder reads, this names it.
    ended: list[Any] = []
    recorder = Recorder(Resource.create({"service.name": "surface"}), ended.append)
    caller = SpanContext(int(CALLER_TRACE, 16), int(CALLER_SPAN, 16), True, SAMPLED_FLAGS)
    before = time.time_ns()
    server = recorder.start("GET /documents", SpanKind.SERVER, caller.trace_id, caller, {})
    client = recorder.start("GET", SpanKind.CLIENT, server.trace_id, server.context(), {"a": 1})
    client.set_status(Status(StatusCode.ERROR))
    client.end()
    server.set_attribute("http.response.status_code", 200)
    server.end()
    assert len(ended) == 2

    request = encode_spans(ended)
    (resource_spans,) = request.resource_spans
    assert {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}[
        "service.name"
    ] == "surface"
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == SCOPE_NAME
    encoded_client, encoded_server = scope_spans.spans
    assert encoded_server.trace_id.hex() == CALLER_TRACE
    assert encoded_server.parent_span_id.hex() == CALLER_SPAN
    assert encoded_server.kind == 2  # SPAN_KIND_SERVER
    assert encoded_server.attributes[0].key == "http.response.status_code"
    assert encoded_server.attributes[0].value.int_value == 200
    assert encoded_client.parent_span_id == encoded_server.span_id
    assert encoded_client.trace_id == encoded_server.trace_id
    assert encoded_client.kind == 3  # SPAN_KIND_CLIENT
    assert encoded_client.status.code == 2  # STATUS_CODE_ERROR
    assert encoded_server.status.code == 0  # unset
    assert before <= encoded_server.start_time_unix_nano <= encoded_client.start_time_unix_nano
    assert encoded_client.end_time_unix_nano <= encoded_server.end_time_unix_nano
    assert encoded_server.span_id != encoded_client.span_id
    assert len(encoded_server.span_id) == 8
