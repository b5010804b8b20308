"""The OTLP/HTTP exporter, wrapped so that every span that never reaches the collector is
counted: those in a batch the collector did not take, and those pushed out of the full
queue while it was down. Imported by `tracing.Tracing.start` only (it loads the SDK).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client import Counter

from proxy.config.tracing import TracingConfig

log = logging.getLogger("proxy.tracing")


class CountingExporter(SpanExporter):
    """Exports through OTLP/HTTP; counts what is lost, logs once per episode of failures.

    `queued` tracks the batch processor's queue from outside (spans ended minus spans handed
    to the exporter): a span ended while it is full pushes the oldest one out, uncounted by
    the SDK, so it is counted here (`ended`, called by the span recorder before it queues)."""

    def __init__(self, inner: SpanExporter, dropped: Counter, capacity: int):
        self.inner = inner
        self.dropped = dropped
        self.capacity = capacity
        self.queued = 0
        self.failing = False
        self._lock = threading.Lock()  # the loop's thread ends spans, the worker exports

    def ended(self) -> None:
        with self._lock:
            if self.queued >= self.capacity:
                self.dropped.inc()  # the oldest span leaves the queue unexported
            else:
                self.queued += 1

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self.queued = max(0, self.queued - len(spans))
        try:
            result = self.inner.export(spans)
        except Exception:  # noqa: BLE001 - whatever the exporter raises, the spans are lost
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            if self.failing:
                log.info("traces reach the collector again")
                self.failing = False
            return result
        self.dropped.inc(len(spans))
        if not self.failing:
            self.failing = True
            log.warning("the trace collector does not take spans; dropping them until it does")
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def counting_exporter(config: TracingConfig, dropped: Counter, capacity: int) -> CountingExporter:
    headers = {name: value.value for name, value in config.headers}
    inner = OTLPSpanExporter(
        endpoint=config.otlp_endpoint,
        headers=headers,
        timeout=5.0,
        compression=Compression.Gzip,
    )
    return CountingExporter(inner, dropped, capacity)
