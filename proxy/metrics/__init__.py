"""Prometheus metrics with the contract's names, registered in an injected registry.

Every label is bounded: methods and reasons come from fixed sets, routes are templates
(`routes.RouteTable`), upstreams are config names. The per-request series live in plain
dicts and lists (`HotPathStats`) that a collector turns into metric families at scrape time:
prometheus_client's own counters take a lock per update, which the benchmark showed costs a
measurable share of a request on the hot path.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, Exemplar, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy import __version__

# `_created` series double the exposition for no use on a dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
TOKEN_FLOWS = ("derived", "anonymous", "client")
CLIENT_TIMEOUT_REASONS = ("header", "idle", "body", "send")
RELOAD_RESULTS = ("applied", "rejected", "unchanged", "error")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _Histogram:
    """Bucket counts (last slot: above every bound) and the sum, for one label set; and, once
    a traced request was observed, each bucket's latest `trace_id` exemplar."""

    __slots__ = ("counts", "exemplars", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0
        self.exemplars: list[Exemplar | None] | None = None

    def note(self, seconds: float, trace_id: str) -> None:
        """The exemplar of a traced observation (already counted) in its bucket."""
        if self.exemplars is None:
            self.exemplars = [None] * len(self.counts)
        exemplar = Exemplar({"trace_id": trace_id}, seconds, time.time())
        self.exemplars[bisect_left(LATENCY_BUCKETS, seconds)] = exemplar

    def buckets(self) -> list[tuple[str, float] | tuple[str, float, Exemplar]]:
        cumulative = 0
        out: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
        bounds = (*map(str, LATENCY_BUCKETS), "+Inf")
        exemplars = self.exemplars or (None,) * len(self.counts)
        for bound, count, exemplar in zip(bounds, self.counts, exemplars, strict=True):
            cumulative += count
            total = float(cumulative)
            out.append((bound, total, exemplar) if exemplar else (bound, total))
        return out


class HotPathStats(Collector):
    """Request counts and durations, and upstream latencies, updated without locks.

    Everything runs on the event loop's thread, scrapes included, so plain containers are safe.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.durations: dict[tuple[str, str], _Histogram] = {}
        self.upstream: dict[str, _Histogram] = {}

    # The two observe methods are called once per request each: `_Histogram.observe` is
    # inlined, and `Metrics` exposes them directly (one call, not three, per observation).

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        if method not in METHODS:
            method = "other"  # arbitrary tokens are valid methods; keep the label set bounded
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        histogram = self.durations.get((method, route))
        if histogram is None:
            histogram = self.durations[(method, route)] = _Histogram()
        histogram.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # `le`: first bound >= v
        histogram.total += seconds

    def observe_upstream(self, upstream: str, seconds: float) -> None:
        histogram = self.upstream.get(upstream)
        if histogram is None:
            histogram = self.upstream[upstream] = _Histogram()
        histogram.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        histogram.total += seconds

    # Traced requests only (`telemetry.tracing`): the observation above plus its exemplar.

    def exemplar_request(self, method: str, route: str, seconds: float, trace_id: str) -> None:
        histogram = self.durations.get((method if method in METHODS else "other", route))
        if histogram is not None:
            histogram.note(seconds, trace_id)

    def exemplar_upstream(self, upstream: str, seconds: float, trace_id: str) -> None:
        histogram = self.upstream.get(upstream)
        if histogram is not None:
            histogram.note(seconds, trace_id)

    def describe(self) -> Iterator[Metric]:
        return self._families(empty=True)

    def collect(self) -> Iterator[Metric]:
        return self._families(empty=False)

    def _families(self, empty: bool) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "gini_proxy_requests",
            "Requests answered by the proxy listener.",
            labels=("method", "route", "status"),
        )
        durations = HistogramMetricFamily(
            "gini_proxy_request_duration_seconds",
            "Time from request received to response complete, by route template.",
            labels=("method", "route"),
        )
        upstream = HistogramMetricFamily(
            "gini_proxy_upstream_request_duration_seconds",
            "Time from sending a request upstream to receiving its response headers.",
            labels=("upstream",),
        )
        if not empty:
            for (method, route, status), count in list(self.requests.items()):
                requests.add_metric((method, route, str(status)), count)
            for (method, route), histogram in list(self.durations.items()):
                durations.add_metric((method, route), histogram.buckets(), histogram.total)
            for name, histogram in list(self.upstream.items()):
                upstream.add_metric((name,), histogram.buckets(), histogram.total)
        yield requests
        yield durations
        yield upstream


class Metrics:
    """The proxy's collectors; one instance per process (or per test) and registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.hot = HotPathStats()
        # Request counts and durations, upstream latencies (the per-request hot path).
        self.observe_request = self.hot.observe_request
        self.observe_upstream = self.hot.observe_upstream
        r.register(self.hot)
        self.upstream_errors = Counter(
            "gini_proxy_upstream_errors_total",
            "Upstream calls that failed, by reason (connect, dns, timeout, tls_certificate, "
            "tls_hostname, tls_handshake, tls_client_certificate, proxy_auth, proxy_refused, "
            "proxy_connect, bad_response, disconnect, "
            "status_5xx, throttled).",
            ("upstream", "reason"),
            registry=r,
        )
        self.tokens_issued = Counter(
            "gini_proxy_tokens_issued_total",
            "Tokens handed out (flow: derived|anonymous|client; source: cache|fleet|upstream).",
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
        )  # fed by `set_function` from the lifecycle's own count, not per-request inc/dec
        self.response_cache = Counter(
            "gini_proxy_response_cache_total",
            "Response cache lookups on allow-listed routes (result: hit|miss|bypass|error).",
            ("route", "result"),
            registry=r,
        )
        self.secret_reloads = Counter(
            "gini_proxy_secret_reloads",
            "Re-reads of reloadable {file:} secrets, by config key "
            "(result: applied|rejected|unchanged|error).",
            ("secret", "result"),
            registry=r,
        )
        self.build_info = Gauge(
            "gini_proxy_build_info",
            "Always 1; the labels say which build runs and which identity key it derives with.",
            ("version", "identity_key_id"),
            registry=r,
        )
        for flow in TOKEN_FLOWS:
            self.token_cache_entries.labels(flow).set(0)
        self._token_children: dict[tuple[str, str], Callable[[], None]] = {}
        self._init_connection_metrics(r)
        self._init_protection_metrics(r)

    def set_build_info(self, identity_key_id: str) -> None:
        """Publish the build: replicas with different key ids alert (never the key itself)."""
        self.build_info.clear()
        self.build_info.labels(__version__, identity_key_id).set(1)

    def response_cache_entries(self) -> Gauge:
        """The entry-count gauge, registered only by a configured response cache: without one
        a constant 0 would read as an empty cache."""
        return Gauge(
            "gini_proxy_response_cache_entries",
            "Entries in the response cache, where the backend can tell (memory, sqlite).",
            registry=self.registry,
        )

    def token_issued(self, flow: str, source: str) -> None:
        """Count one token handed out (source: cache|fleet|upstream; children bound once)."""
        inc = self._token_children.get((flow, source))
        if inc is None:
            inc = self._token_children[(flow, source)] = self.tokens_issued.labels(flow, source).inc
        inc()

    def upstream_error(self, upstream: str, reason: str) -> None:
        self.upstream_errors.labels(upstream, reason).inc()

    def _init_connection_metrics(self, r: CollectorRegistry) -> None:
        """Caller connections on the proxy listener (`client_timeouts`, `max_connections`)."""
        self.client_timeouts = Counter(
            "gini_proxy_client_timeouts_total",
            "Caller connections closed for being too slow or idle, by reason "
            "(header, idle, body, send).",
            ("reason",),
            registry=r,
        )
        for reason in CLIENT_TIMEOUT_REASONS:
            self.client_timeouts.labels(reason)
        self.connections_refused = Counter(
            "gini_proxy_connections_refused_total",
            "Caller connections refused because max_connections were open.",
            registry=r,
        )
        self.open_connections = Gauge(
            "gini_proxy_open_connections",
            "Caller connections open on the proxy listener right now.",
            registry=r,
        )  # fed by `set_function` from the connection guard's own count

    def client_timeout(self, reason: str) -> None:
        """Count one caller connection cut by `client_timeouts` (reason: CLIENT_TIMEOUT_REASONS)."""
        self.client_timeouts.labels(reason).inc()

    def _init_protection_metrics(self, r: CollectorRegistry) -> None:
        """`upstream.protection`: pauses, breakers, shed calls and automatic retries."""
        self.upstream_pause = Gauge(
            "gini_proxy_upstream_pause_seconds",
            "Seconds left of the pause Gini asked for with Retry-After; 0 when not paused.",
            ("upstream",),
            registry=r,
        )  # fed by `set_function` from each upstream's guard
        self.upstream_breaker = Gauge(
            "gini_proxy_upstream_breaker_open",
            "1 while the upstream's breaker is open (or probing), else 0.",
            ("upstream",),
            registry=r,
        )
        self.upstream_shed_calls = Counter(
            "gini_proxy_upstream_shed_total",
            "Calls answered without calling Gini, by reason (paused, busy, breaker).",
            ("upstream", "reason"),
            registry=r,
        )
        self.upstream_retries = Counter(
            "gini_proxy_upstream_retries_total",
            "Automatic retries of calls to Gini, by result (sent, over_budget).",
            ("upstream", "result"),
            registry=r,
        )
        # Children bound once: a shed answer must cost no more than the cheapest refusal.
        self._shed_children: dict[tuple[str, str], Callable[[], None]] = {}
        for upstream in ("pay_api", "user_center"):
            for reason in ("paused", "busy", "breaker"):
                child = self.upstream_shed_calls.labels(upstream, reason)
                self._shed_children[(upstream, reason)] = child.inc
            for result in ("sent", "over_budget"):
                self.upstream_retries.labels(upstream, result)

    def upstream_shed(self, upstream: str, reason: str) -> None:
        self._shed_children[(upstream, reason)]()

    def upstream_retry(self, upstream: str, result: str) -> None:
        self.upstream_retries.labels(upstream, result).inc()
