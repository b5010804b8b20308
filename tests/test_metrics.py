"""The per-request series (`HotPathStats`, counted by hand: prometheus_client's own Histogram
costs 3-4 % of a flow-1 request, docs/performance.md), read back through the registry as a
scrape sees them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.metrics import LATENCY_BUCKETS, Metrics


def _bucket(metrics: Metrics, name: str, le: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(f"{name}_bucket", {**labels, "le": le})
    assert value is not None
    return value


def test_a_value_on_a_bound_counts_in_that_bucket_and_unknown_methods_are_other() -> None:
    metrics = Metrics()
    metrics.observe_request("GET", "/documents", 200, 0.005)
    metrics.observe_request("BREW", "/documents", 405, 0.5)
    metrics.observe_upstream("pay_api", 61.0)
    name = "gini_proxy_request_duration_seconds"
    assert _bucket(metrics, name, "0.0025", method="GET", route="/documents") == 0
    assert _bucket(metrics, name, "0.005", method="GET", route="/documents") == 1
    assert _bucket(metrics, name, "0.5", method="other", route="/documents") == 1
    upstream = "gini_proxy_upstream_request_duration_seconds"
    assert _bucket(metrics, upstream, "60", upstream="pay_api") == 0
    assert _bucket(metrics, upstream, "+Inf", upstream="pay_api") == 1
    get = metrics.registry.get_sample_value
    assert (
        get(
            "gini_proxy_requests_total", {"method": "other", "route": "/documents", "status": "405"}
        )
        == 1
    )


@given(st.lists(st.floats(min_value=0, max_value=120, allow_nan=False), max_size=40))
def test_counts_and_sums_add_up(values: list[float]) -> None:
    metrics = Metrics()
    for value in values:
        metrics.observe_request("GET", "/documents", 200, value)
    labels = {"method": "GET", "route": "/documents"}
    get = metrics.registry.get_sample_value
    name = "gini_proxy_request_duration_seconds"
    for bound in LATENCY_BUCKETS:
        expected = sum(v <= bound for v in values)
        assert (get(f"{name}_bucket", {**labels, "le": str(bound)}) or 0) == expected
    assert (get(f"{name}_count", labels) or 0) == len(values)
    assert abs((get(f"{name}_sum", labels) or 0) - sum(values)) < 1e-6
    assert (get("gini_proxy_requests_total", {**labels, "status": "200"}) or 0) == len(values)
