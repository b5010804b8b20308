"""Metric families registered only when their feature is configured (fleet, store, audit,
tracing): absent from `/metrics` otherwise, as the contract says."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


def fleet_metrics(registry: CollectorRegistry) -> tuple[Gauge, Counter, Counter, Counter]:
    """The `fleet` series, registered only with a fleet section (absent otherwise): up,
    errors by operation, lock waits and lock takeovers."""
    return (
        Gauge(
            "gini_proxy_fleet_up",
            "1 while the fleet's Redis answers, 0 while this replica acts alone.",
            registry=registry,
        ),
        Counter(
            "gini_proxy_fleet_errors_total",
            "Fleet Redis calls that failed or timed out, by operation "
            "(ping, get, lock, write, unlock, delete).",
            ("op",),
            registry=registry,
        ),
        Counter(
            "gini_proxy_fleet_lock_waits_total",
            "Token fetches that waited for another replica's fetch of the same key.",
            registry=registry,
        ),
        Counter(
            "gini_proxy_fleet_lock_takeovers_total",
            "Token fetch locks taken over after waiting: the holder died, failed or gave up.",
            registry=registry,
        ),
    )


def store_up_gauge(registry: CollectorRegistry) -> Gauge:
    """`gini_proxy_store_up`, registered only when a store is configured (absent otherwise)."""
    return Gauge(
        "gini_proxy_store_up",
        "1 when the credential store answered its last background check, 0 when not.",
        registry=registry,
    )


def audit_counters(registry: CollectorRegistry) -> tuple[Counter, Counter]:
    """Audit records written (by action) and lost, registered only with an `audit` section."""
    records = Counter(
        "gini_proxy_audit_records_total",
        "Audit records written, by action.",
        ("action",),
        registry=registry,
    )
    errors = Counter(
        "gini_proxy_audit_errors_total",
        "Audit records that could not be written.",
        registry=registry,
    )
    return records, errors


def spans_dropped_counter(registry: CollectorRegistry) -> Counter:
    """Spans that never reached the collector, registered only with a `tracing` section."""
    return Counter(
        "gini_proxy_trace_spans_dropped_total",
        "Spans dropped: the collector refused or could not be reached, or the queue was full.",
        registry=registry,
    )
