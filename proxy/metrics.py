"""Prometheus metrics with the contract's names, registered in an injected registry.

Every label is bounded: methods and reasons come from fixed sets, routes are templates
(`routes.RouteTable`), upstreams are config names. Label children are cached so the hot path
does one dict lookup instead of prometheus_client's validating `labels()` call.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from . import __version__

# `_created` series double the exposition for no use on a dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UPSTREAM_REASONS = ("connect", "timeout", "bad_response", "disconnect", "status_5xx", "throttled")
TOKEN_FLOWS = ("derived", "anonymous", "client")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

_Child = tuple[Callable[[], None], Callable[[float], None]]


class Metrics:
    """The proxy's collectors; one instance per process (or per test) and registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gini_proxy_requests_total",
            "Requests answered by the proxy listener.",
            ("method", "route", "status"),
            registry=r,
        )
        self.request_duration = Histogram(
            "gini_proxy_request_duration_seconds",
            "Time from request received to response complete, by route template.",
            ("method", "route"),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gini_proxy_upstream_request_duration_seconds",
            "Time from sending a request upstream to receiving its response headers.",
            ("upstream",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "gini_proxy_upstream_errors_total",
            "Upstream calls that failed, by reason (connect, timeout, bad_response, disconnect, "
            "status_5xx, throttled).",
            ("upstream", "reason"),
            registry=r,
        )
        self.tokens_issued = Counter(
            "gini_proxy_tokens_issued_total",
            "Tokens handed out (flow: derived|anonymous|client; source: cache|upstream).",
            ("flow", "source"),
            registry=r,
        )
        self.token_fetch_errors = Counter(
            "gini_proxy_token_fetch_errors_total",
            "Token fetches from Gini or the User Center that failed, by flow and reason.",
            ("flow", "reason"),
            registry=r,
        )
        self.token_cache_entries = Gauge(
            "gini_proxy_token_cache_entries",
            "Tokens currently cached, by flow.",
            ("flow",),
            registry=r,
        )
        self.anonymous_users_created = Counter(
            "gini_proxy_anonymous_users_created_total",
            "Anonymous Gini users created at the User Center.",
            registry=r,
        )
        self.in_flight = Gauge(
            "gini_proxy_in_flight_requests",
            "Requests being handled by the proxy listener right now.",
            registry=r,
        )
        self.build_info = Gauge(
            "gini_proxy_build_info",
            "Always 1; the version label says which build runs.",
            ("version",),
            registry=r,
        )
        self.build_info.labels(__version__).set(1)
        for flow in TOKEN_FLOWS:
            self.token_cache_entries.labels(flow).set(0)
        self._request_children: dict[tuple[str, str, int], _Child] = {}
        self._upstream_children: dict[str, Callable[[float], None]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration (the per-request hot path)."""
        if method not in METHODS:
            method = "other"  # arbitrary tokens are valid methods; keep the label set bounded
        key = (method, route, status)
        child = self._request_children.get(key)
        if child is None:
            child = (
                self.requests.labels(method, route, str(status)).inc,
                self.request_duration.labels(method, route).observe,
            )
            self._request_children[key] = child
        child[0]()
        child[1](seconds)

    def observe_upstream(self, upstream: str, seconds: float) -> None:
        """Record the time an upstream took to answer with headers."""
        observe = self._upstream_children.get(upstream)
        if observe is None:
            observe = self._upstream_children[upstream] = self.upstream_duration.labels(
                upstream
            ).observe
        observe(seconds)

    def upstream_error(self, upstream: str, reason: str) -> None:
        self.upstream_errors.labels(upstream, reason).inc()
