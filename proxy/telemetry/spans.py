"""The spans of sampled requests, recorded by hand and handed to the SDK as finished spans.

The SDK's tracer builds a mutable span at every start: a sampler call, a bounded attribute
map with its lock, event and link lists, context objects. On the benchmark machine that cost
about 10 µs per flow-1 request at `sample_ratio: 0.05`, 5 % of the request: some 200 µs for
each sampled request's two spans, whose code runs too rarely to stay in the CPU's caches.
Here a span is a small object until it ends; then it becomes the SDK's own `ReadableSpan`,
with the fields the tracer's span would have had (ids from the SDK's `RandomIdGenerator`,
the resource, the instrumentation scope), and goes to the SDK's `BatchSpanProcessor` and OTLP
exporter like any other. Sampling is decided before a span exists (`tracing.decide`), so
every span here is sampled.

Imported by `tracing.Tracing.start` only (it loads the SDK). The SDK surface this relies on
is pinned by `tests/test_tracing.py::test_the_sdk_surface_the_span_recorder_uses`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

SAMPLED = TraceFlags(TraceFlags.SAMPLED)
UNSET = Status(StatusCode.UNSET)
SCOPE_NAME = "gini-auth-proxy"


class Recorder:
    """Where finished spans go, and what every span carries."""

    __slots__ = ("new_span_id", "new_trace_id", "on_end", "resource", "scope")

    def __init__(self, resource: Resource, on_end: Callable[[ReadableSpan], None]):
        self.resource = resource
        self.scope = InstrumentationScope(SCOPE_NAME)
        self.on_end = on_end  # the span processors' `on_end`
        ids = RandomIdGenerator()
        self.new_span_id = ids.generate_span_id
        self.new_trace_id = ids.generate_trace_id

    def remote(self, trace_id: int, span_id: int) -> SpanContext:
        """A sampled caller's span, as the parent of a SERVER span."""
        return SpanContext(trace_id, span_id, is_remote=True, trace_flags=SAMPLED)

    def start(
        self,
        name: str,
        kind: SpanKind,
        trace_id: int,
        parent: SpanContext | None,
        attributes: dict[str, Any],
    ) -> OpenSpan:
        return OpenSpan(self, name, kind, trace_id, parent, attributes)


class OpenSpan:
    """A started span: the calls `tracing` makes on an SDK span, and nothing else."""

    __slots__ = (
        "attributes",
        "kind",
        "name",
        "parent",
        "recorder",
        "span_id",
        "start",
        "status",
        "trace_id",
    )

    def __init__(
        self,
        recorder: Recorder,
        name: str,
        kind: SpanKind,
        trace_id: int,
        parent: SpanContext | None,
        attributes: dict[str, Any],
    ):
        self.recorder = recorder
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = recorder.new_span_id()
        self.parent = parent
        self.attributes = attributes
        self.status = UNSET
        self.start = time.time_ns()

    def context(self) -> SpanContext:
        """This span as the parent of another."""
        return SpanContext(self.trace_id, self.span_id, is_remote=False, trace_flags=SAMPLED)

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_status(self, status: Status) -> None:
        self.status = status

    def end(self) -> None:
        recorder = self.recorder
        recorder.on_end(
            ReadableSpan(
                self.name,
                self.context(),
                self.parent,
                recorder.resource,
                self.attributes,
                kind=self.kind,
                status=self.status,
                start_time=self.start,
                end_time=time.time_ns(),
                instrumentation_scope=recorder.scope,
            )
        )
