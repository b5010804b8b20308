"""OpenTelemetry traces: a SERVER span per sampled request, CLIENT spans for its calls to Gini,
INTERNAL spans for store operations, exported in batches over OTLP/HTTP (protobuf).

Sampling is decided before any span exists, from the caller's `traceparent` and the ratio
(`decide`): an unsampled request builds no span at all, and the flow code finds no
`RequestTrace` in `CURRENT`. A sampled request's spans are recorded by `spans.Recorder` and
reach the SDK's batch processor as finished spans (that module says why). The SDK itself is
imported only by `Tracing.start`, so a proxy without a `tracing` section never loads it.

Spans carry only what is listed in `SERVER_ATTRIBUTES`/`CLIENT_ATTRIBUTES`: methods, route
templates, host names, statuses and the upstream's config name. No header value, path, query,
user id, identifier, token or secret is ever given to the SDK.

Export runs in the SDK's worker thread: a collector that is down or slow fills the bounded
queue, and what falls out of it, or fails to export, is counted
(`gini_proxy_trace_spans_dropped_total`) and logged once per episode; a request never waits.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from multidict import CIMultiDict
from prometheus_client import Counter
from yarl import URL

from proxy.config.tracing import TracingConfig
from proxy.metrics import HotPathStats

log = logging.getLogger("proxy.tracing")

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
QUEUE_SPANS = 4096  # spans waiting for export at most; older ones are dropped first
EXPORT_TIMEOUT_SECONDS = 5.0
CLOSE_SECONDS = 3.0  # the last flush at shutdown; a collector that is down does not hold it


def parse_traceparent(values: Sequence[str]) -> tuple[str, str, bool, str | None] | None:
    """(trace id, parent span id, sampled, version) of one valid W3C `traceparent`; None for
    none, several, or a malformed one (then the request counts as arriving without one)."""
    if len(values) != 1:
        return None
    value = values[0].strip()
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or (version == "00" and len(value) != 55):
        return None
    if len(value) > 55 and value[55] != "-":  # a later version may only add `-` fields
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id, bool(int(flags, 16) & 1), version


def decide(
    parent: tuple[str, str, bool, str | None] | None,
    ratio: float,
    draw: Callable[[], float] = random.random,
) -> bool:
    """Parent-based sampling: a caller's decision is followed, the ratio decides without one."""
    if parent is not None:
        return parent[2]
    return ratio > 0 and draw() < ratio


class RequestTrace:
    """The spans of one sampled request: its SERVER span and what opens children under it."""

    __slots__ = ("context", "method", "route", "server", "trace_id", "tracing")

    def __init__(self, tracing: Tracing, server: Any, method: str, route: str):
        self.tracing = tracing
        self.server = server  # a `spans.OpenSpan`
        self.context = server.context()  # the parent of every child span
        self.trace_id = f"{server.trace_id:032x}"
        self.method, self.route = method, route

    def client_call(
        self, upstream: str, method: str, url: str | URL, headers: Mapping[str, str]
    ) -> tuple[TracedCall[Any], Mapping[str, str]]:
        """A CLIENT span for one call to Gini, started now, and the headers to send: with
        `propagate_to_gini`, a copy adding our `traceparent` (naming this span)."""
        attributes = {"http.request.method": method, "gini.upstream": upstream}
        host = URL(url).host
        if host:
            attributes["server.address"] = host
        tracing = self.tracing
        span = tracing.recorder.start(
            method, tracing.kinds.CLIENT, self.server.trace_id, self.context, attributes
        )
        if tracing.propagate:
            headers = CIMultiDict(headers)
            headers["traceparent"] = self.traceparent(span)
        stats, trace_id = tracing.stats, self.trace_id

        def answered(seconds: float) -> None:  # the upstream histogram's exemplar
            if stats is not None:
                stats.exemplar_upstream(upstream, seconds, trace_id)

        return TracedCall(span, answered), headers

    def internal(self, name: str) -> Any:
        """An INTERNAL span (a store operation), started now; `name` is a fixed string."""
        tracing = self.tracing
        return tracing.recorder.start(
            name, tracing.kinds.INTERNAL, self.server.trace_id, self.context, {}
        )

    def traceparent(self, span: Any) -> str:
        """The `traceparent` naming `span` as the parent (sent to Gini when propagating)."""
        return f"00-{self.trace_id}-{span.span_id:016x}-01"

    def end(self, status: int, seconds: float) -> None:
        end_span(self.server, status)
        if self.tracing.stats is not None:  # the request histogram's exemplar
            self.tracing.stats.exemplar_request(self.method, self.route, seconds, self.trace_id)


class Answered(Protocol):
    response: Any  # an aiohttp ClientResponse, once the answer's head is in
    seconds: float  # until the answer's head (what the upstream histogram observed)


A = TypeVar("A", bound=Answered)


class TracedCall(Generic[A]):
    """Wraps `Upstream.call`'s context manager: the CLIENT span ends with the call, ERROR when
    it failed (no answer, or the block raised) or the answer was a 5xx."""

    __slots__ = ("answered", "inner", "span", "status")

    def __init__(self, span: Any, answered: Callable[[float], None]):
        self.span = span
        self.answered = answered
        self.status: int | None = None
        self.inner: AbstractAsyncContextManager[A]

    def around(self, inner: AbstractAsyncContextManager[A]) -> TracedCall[A]:
        self.inner = inner
        return self

    async def __aenter__(self) -> A:
        try:
            call = await self.inner.__aenter__()
        except BaseException:
            end_span(self.span, None)
            raise
        self.status = call.response.status
        self.answered(call.seconds)
        return call

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        failed = exc is not None
        try:
            return await self.inner.__aexit__(kind, exc, tb)
        except BaseException:
            failed = True
            raise
        finally:
            end_span(self.span, None if failed else self.status)


def end_span(span: Any, status: int | None) -> None:
    """End a span with its HTTP status (None: the call failed without an answer)."""
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if status is None or status >= 500:
        span.set_status(span_error())
    span.end()


def end_internal(span: Any, failed: bool) -> None:
    if failed:
        span.set_status(span_error())
    span.end()


_ERROR: Any = None


def span_error() -> Any:
    """The ERROR status, with no description (an exception's text could hold anything)."""
    return _ERROR


CURRENT: ContextVar[RequestTrace | None] = ContextVar("gini_proxy_trace", default=None)


class Tracing:
    """The span recorder and its exporter; `start` inside the running loop, `close` at
    shutdown."""

    def __init__(self, config: TracingConfig, dropped: Counter):
        self.config = config
        self.ratio = config.sample_ratio
        self.propagate = config.propagate_to_gini
        self.dropped = dropped
        self.stats: HotPathStats | None = None  # where sampled observations leave exemplars
        self.recorder: Any = None
        self.kinds: Any = None
        self._processor: Any = None
        self._exporter: Any = None

    def start(self) -> None:
        # The SDK loads here only: about 15 MiB and 100 ms a proxy without tracing skips.
        global _ERROR  # noqa: PLW0603 - one immutable value, set once the SDK is loaded
        from opentelemetry import trace  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
        from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415

        from proxy.telemetry.export import counting_exporter  # noqa: PLC0415
        from proxy.telemetry.spans import Recorder  # noqa: PLC0415

        # The SDK logs a line per dropped span and per failed batch: counted and logged once
        # per episode by `counting_exporter` instead.
        logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
        _ERROR = Status(StatusCode.ERROR)
        self.kinds = trace.SpanKind
        exporter = self._exporter = counting_exporter(self.config, self.dropped, QUEUE_SPANS)
        processor = self._processor = BatchSpanProcessor(
            exporter,
            max_queue_size=QUEUE_SPANS,
            schedule_delay_millis=1000,
            export_timeout_millis=EXPORT_TIMEOUT_SECONDS * 1000,
        )
        queue = processor.on_end

        def on_end(span: Any) -> None:
            exporter.ended()  # counted before the queue may push the oldest span out
            queue(span)

        resource = Resource.create({"service.name": self.config.service_name})
        self.recorder = Recorder(resource, on_end)

    def begin(
        self, method: str, route: str, parent: tuple[str, str, bool, str | None] | None
    ) -> RequestTrace:
        """The SERVER span of a sampled request, a child of the caller's span if it sent one."""
        recorder = self.recorder
        if parent is None:
            trace_id, caller = recorder.new_trace_id(), None
        else:
            trace_id = int(parent[0], 16)
            caller = recorder.remote(trace_id, int(parent[1], 16))
        server = recorder.start(
            f"{method} {route}",
            self.kinds.SERVER,
            trace_id,
            caller,
            {"http.request.method": method, "http.route": route},
        )
        return RequestTrace(self, server, method, route)

    async def close(self) -> None:
        """Export what is queued (for a bounded time), then stop the worker thread."""
        if self._processor is None:
            return
        processor, exporter = self._processor, self._exporter
        self._processor = None

        def shut() -> None:
            processor.force_flush(int(CLOSE_SECONDS * 1000))
            exporter.shutdown()  # a collector still down: the final export fails at once
            processor.shutdown()

        try:
            await asyncio.wait_for(asyncio.to_thread(shut), CLOSE_SECONDS + 2)
        except TimeoutError:
            log.warning("traces still queued at shutdown were dropped")
