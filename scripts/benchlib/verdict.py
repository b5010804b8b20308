"""The targets and the verdict of a bench run: one row per target, PASS or FAIL.

Rows whose target starts with two spaces are information and never fail the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .compare import Comparison
from .transfer import MIB

if TYPE_CHECKING:
    from .report import Results

# Flow 1, GET /documents, proxy with every feature on (its default configuration), measured
# alternately with the baselines in the same minutes (compare.py); plain HTTP and TLS alike.
TARGET_LEAN_RATIO = 0.85  # proxy req/s >= this x the lean forwarder's, 32 connections
TARGET_BARE_RATIO = 0.90  # proxy req/s >= this x the bare forwarder's, 32 connections
TARGET_P50_OVER_BARE_MS = 0.10  # proxy p50 - bare p50 at 1 connection
TARGET_RSS_MIB = 80.0
TARGET_RSS_REQUESTS = 100_000
TARGET_GROWTH_MIB = 20.0
TARGET_TOKENS_RATIO = 1.5  # token vending from the cache >= this x flow-1 req/s, same proxy
TARGET_JWT_RATIO = 0.95
# An answer shed by upstream protection costs no more CPU than a 400 for a bad user id; the
# 5 % margin is the noise of CPU per request between two alternating wrk loads.
TARGET_SHED_CPU_RATIO = 1.05
TARGET_FLEET_RATIO = 0.95  # vending from a warm local cache, fleet on >= this x fleet off
TARGET_FLEET_REDIS_MS = 1.0  # a token from Redis adds at most this to p50 over a local one
TARGET_AUDIT_LEAN_RATIO = 0.80  # tracing at 0.05 plus the audit log >= this x lean, 32 conns

Row = tuple[str, str, str]
VARIANTS = (("plain", ""), ("tls", "TLS: "))


def _ok(condition: bool) -> str:
    return "PASS" if condition else "FAIL"


def _errors(comparison: Comparison, *keys: str) -> int:
    return sum(comparison.sides[k].errors for k in keys if k in comparison.sides)


def _ratio_row(c: Comparison, key: str, base: str, target: str, floor: float | None) -> list[Row]:
    """proxy-vs-baseline req/s; with errors in either side the figure is not a pass."""
    ratio = c.rps_ratio(key, base)
    if ratio is None:
        return []
    a, b = c.sides[key], c.sides[base]
    measured = f"{ratio:.2f} x ({a.rps:.0f} / {b.rps:.0f})"
    errors = _errors(c, key, base)
    if errors:
        measured += f", {errors} errors"
    if floor is None:
        return [(target, measured, "info")]
    return [(target, measured, _ok(ratio >= floor and not errors))]


def _p50_row(c: Comparison, key: str, base: str, target: str, ceiling: float | None) -> list[Row]:
    diff = c.p50_diff_ms(key, base)
    if diff is None:
        return []
    a, b = c.sides[key], c.sides[base]
    measured = f"{diff:+.3f} ms ({a.p50_ms:.3f} - {b.p50_ms:.3f})"
    errors = _errors(c, key, base)
    if errors:
        measured += f", {errors} errors"
    if ceiling is None:
        return [(target, measured, "info")]
    return [(target, measured, _ok(diff <= ceiling and not errors))]


def _flow1(results: Results, variant: str, prefix: str) -> list[Row]:
    rows: list[Row] = []
    many = results.compare.get(f"{variant}/32")
    if many is not None:
        rows += _ratio_row(
            many,
            "proxy",
            "lean",
            f"{prefix}proxy req/s >= {TARGET_LEAN_RATIO} x lean (32 conns)",
            TARGET_LEAN_RATIO,
        )
        rows += _ratio_row(
            many,
            "proxy",
            "bare",
            f"{prefix}proxy req/s >= {TARGET_BARE_RATIO} x bare (32 conns)",
            TARGET_BARE_RATIO,
        )
        rows += _ratio_row(
            many, "lean", "bare", f"  {prefix}lean vs bare req/s (information)", None
        )
        rows += _ratio_row(
            many, "proxy_log_off", "lean", f"  {prefix}proxy, access log off, vs lean (info)", None
        )
    one = results.compare.get(f"{variant}/1")
    if one is not None:
        rows += _p50_row(
            one,
            "proxy",
            "bare",
            f"{prefix}proxy p50 - bare p50 <= {TARGET_P50_OVER_BARE_MS:.2f} ms (1 conn)",
            TARGET_P50_OVER_BARE_MS,
        )
        rows += _p50_row(
            one, "proxy", "lean", f"  {prefix}proxy p50 - lean p50, 1 conn (information)", None
        )
        direct = (results.one if variant == "plain" else results.tls_one).get("direct")
        proxy = one.sides.get("proxy")
        if direct is not None and proxy is not None:
            rows.append(
                (
                    f"  {prefix}proxy p50 - direct p50, 1 conn (information)",
                    f"{proxy.p50_ms - direct.p50_ms:+.3f} ms "
                    f"({proxy.p50_ms:.3f} - {direct.p50_ms:.3f})",
                    "info",
                )
            )
    return rows


def _memory(results: Results) -> list[Row]:
    rows: list[Row] = []
    if results.rss_after_kib:
        mib = results.rss_after_kib / 1024
        enough = results.proxy_requests >= TARGET_RSS_REQUESTS
        rows.append(
            (
                f"RSS <= {TARGET_RSS_MIB:.0f} MiB after >= 100k requests",
                f"{mib:.1f} MiB after {results.proxy_requests:,} requests",
                _ok(mib <= TARGET_RSS_MIB) if enough else "n/a (too few requests)",
            )
        )
    for transfer in results.transfers:
        rows.append(
            (
                f"peak RSS growth < {TARGET_GROWTH_MIB:.0f} MiB, "
                f"{transfer.size // MIB} MiB {transfer.what}",
                f"{transfer.growth_mib:.1f} MiB",
                _ok(transfer.growth_mib < TARGET_GROWTH_MIB),
            )
        )
    return rows


def _tokens(results: Results) -> list[Row]:
    rows: list[Row] = []
    tokens = results.compare.get("tokens/32")
    if tokens is not None:
        rows += _ratio_row(
            tokens,
            "tokens",
            "documents",
            f"token vending req/s >= {TARGET_TOKENS_RATIO} x flow 1 (same proxy)",
            TARGET_TOKENS_RATIO,
        )
    for run, label in zip(results.vending, ("spread", "burst"), strict=False):
        clean = run.errors == 0 and run.wrong == 0
        rows.append(
            (
                f"token fetches = {run.users} for {run.requests:,} vending requests ({label})",
                f"{run.fetches} ({run.errors} errors, {run.wrong} wrong tokens)",
                _ok(run.fetches == run.users and clean),
            )
        )
    return rows


def _cache_and_jwt(results: Results) -> list[Row]:
    rows: list[Row] = []
    uncached = results.cache.get("none")
    for key in ("memory", "redis", "sqlite"):
        cached = results.cache.get(key)
        if uncached and cached and uncached.rps:
            ratio = cached.rps / uncached.rps
            rows.append(
                (
                    f"  cached req/s vs uncached, {key} (information)",
                    f"{ratio:.2f} x ({cached.rps:.0f} / {uncached.rps:.0f})",
                    "info",
                )
            )
    jwt = results.compare.get("jwt/32")
    if jwt is not None:
        rows += _ratio_row(
            jwt,
            "jwt",
            "basic",
            f"jwt mode req/s >= {TARGET_JWT_RATIO} x basic mode (32 conns)",
            TARGET_JWT_RATIO,
        )
    return rows


def _refusal_row(
    target: str, cpu_us: float, refused_us: float, counted: int, calls: int, max_calls: int
) -> Row:
    """A refusal's CPU against the 400's; it fails as well if the proxy refused nothing this
    way or more than `max_calls` calls reached the upstream meanwhile."""
    ratio = cpu_us / refused_us
    measured = f"{ratio:.2f} x ({cpu_us:.0f} / {refused_us:.0f} us)"
    held = counted > 0 and calls <= max_calls
    if not held:
        measured += f", {calls} upstream calls"
    return (target, measured, _ok(ratio <= TARGET_SHED_CPU_RATIO and held))


def _shed(results: Results) -> list[Row]:
    shed = results.shed
    if shed is None or shed.ratio is None:
        return []
    rows = [
        _refusal_row(
            f"shed answer CPU <= {TARGET_SHED_CPU_RATIO} x a 400's (same proxy)",
            shed.shed_cpu_us,
            shed.refused_cpu_us,
            shed.shed_counted,
            shed.upstream_calls,
            2,
        )
    ]
    if shed.breaker_ratio is not None:
        # The breaker's proxy probes Gini once per open_seconds: a few calls, never the load.
        rows.append(
            _refusal_row(
                f"breaker answer CPU <= {TARGET_SHED_CPU_RATIO} x a 400's",
                shed.breaker_cpu_us,
                shed.refused_cpu_us,
                shed.breaker_counted,
                shed.breaker_upstream_calls,
                20,
            )
        )
    return rows


def _fleet(results: Results) -> list[Row]:
    rows: list[Row] = []
    vending = results.compare.get("fleet/32")
    if vending is not None:
        rows += _ratio_row(
            vending,
            "fleet",
            "local",
            f"token vending, fleet on >= {TARGET_FLEET_RATIO} x off (warm cache)",
            TARGET_FLEET_RATIO,
        )
    fleet = results.fleet
    if fleet is None:
        return rows
    if fleet.latency_users:
        measured = f"{fleet.added_ms:+.3f} ms ({fleet.redis_p50_ms:.3f} - {fleet.local_p50_ms:.3f})"
        clean = fleet.latency_errors == 0 and fleet.from_fleet == fleet.latency_users
        if not clean:
            measured += f", {fleet.from_fleet} from Redis, {fleet.latency_errors} errors"
        rows.append(
            (
                f"token p50, Redis - local memory <= {TARGET_FLEET_REDIS_MS:.0f} ms",
                measured,
                _ok(fleet.added_ms <= TARGET_FLEET_REDIS_MS and clean),
            )
        )
    for s in fleet.spreads:
        rows.append(
            (
                f"  /login per user, {s.replicas} replica(s), fleet {'on' if s.fleet else 'off'}",
                f"{s.per_user:.2f} ({s.logins} for {s.users}, {s.errors} errors)",
                "info",
            )
        )
    return rows


def _tracing(results: Results) -> list[Row]:
    traced = results.compare.get("tracing/32")
    if traced is None:
        return []
    rows = _ratio_row(
        traced,
        "audit",
        "lean",
        f"tracing 0.05 + audit req/s >= {TARGET_AUDIT_LEAN_RATIO:.2f} x lean (32 conns)",
        TARGET_AUDIT_LEAN_RATIO,
    )
    for key in ("off", "ratio0", "ratio005", "ratio1", "audit"):
        side = traced.sides.get(key)
        if side is not None:
            rows.append(
                (f"  CPU per request, {side.label}", f"{side.cpu_us_per_request:.0f} us", "info")
            )
    return rows


def verdict_rows(results: Results) -> list[Row]:
    """(target, measured, PASS|FAIL|info|n/a) for each target, in a fixed order."""
    rows: list[Row] = []
    for variant, prefix in VARIANTS:
        rows += _flow1(results, variant, prefix)
    rows += _memory(results) + _tokens(results) + _cache_and_jwt(results)
    return rows + _shed(results) + _fleet(results) + _tracing(results)
