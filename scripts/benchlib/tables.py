"""The Markdown tables `scripts/bench` prints: one per section, then the verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .compare import Comparison
from .fleet import table as fleet_table
from .footprint import ENTRIES
from .shed import table as shed_table
from .tracing import table as tracing_table
from .transfer import MIB
from .upstream import DOCUMENTS
from .wrk import WrkResult

if TYPE_CHECKING:
    from .report import Results

CACHE_ROWS = (
    ("none", "no response cache"),
    ("memory", "response cache, memory"),
    ("redis", "response cache, redis"),
    ("sqlite", "response cache, sqlite"),
)
_WRK_HEAD = (
    "| server                  | conns |   req/s | p50 ms | p90 ms | p99 ms | errors "
    "| server CPU us/req | other load, steal (cores) |",
    "|-------------------------|------:|--------:|-------:|-------:|-------:|-------:"
    "|------------------:|--------------------------:|",
)


def _figures(r: WrkResult) -> str:
    """The columns after `conns` of a wrk row."""
    return (
        f"{r.rps:>7.0f} | {r.p50_ms:>6.3f} | {r.p90_ms:>6.3f} | {r.p99_ms:>6.3f} | "
        f"{r.errors:>6} | {r.cpu_us_per_request:>17.0f} | "
        f"{f'{r.other_cores:.2f}, {r.steal_cores:.2f}':>25} |"
    )


def _head(first: str, extra: str = "", rule: str = "") -> list[str]:
    return [
        f"| {first:<23} " + _WRK_HEAD[0][26:] + extra,
        _WRK_HEAD[1] + rule,
    ]


def comparison_table(title: str, c: Comparison) -> list[str]:
    """One row per contender: its best-runs figures, the spread of all its runs, its CPU."""
    counted = any(side.upstream_connections is not None for side in c.sides.values())
    lines = [
        "",
        f"{title}, {c.connections} conn{'s' if c.connections > 1 else ''}: {c.method()}",
        "",
        "| contender                 | req/s, best  | all runs, req/s | "
        "p50 ms, best | server CPU us/req | errors | contended runs, max other load |"
        + (" TLS handshakes / 1,000 req |" if counted else ""),
        "|---------------------------|-------------:|----------------:|-------------:|"
        "------------------:|-------:|-------------------------------:|"
        + ("---------------------------:|" if counted else ""),
    ]
    for side in c.sides.values():
        low, high = side.rps_range
        load = f"{side.contended_runs} of {len(side.runs)}, {side.max_other_cores:.2f} cores"
        row = (
            f"| {side.label:<25} | {side.rps:>12.0f} | {f'{low:.0f} - {high:.0f}':>15} | "
            f"{side.p50_ms:>12.3f} | {side.cpu_us_per_request:>17.0f} | {side.errors:>6} | "
            f"{load:>30} |"
        )
        if counted:
            opened, sent = side.upstream_connections or 0, side.requests
            per_k = f"{opened * 1000 / sent:.3f} ({opened} in {sent:,})" if sent else "-"
            row += f" {per_k:>26} |"
        lines.append(row)
    return lines


def _flow1(results: Results) -> list[str]:
    lines = ["", f"### flow 1: GET /documents ({len(DOCUMENTS)} B of JSON)", ""]
    lines += _head("server")
    for conns, group in ((32, results.many), (1, results.one)):
        r = group.get("direct")
        if r is not None:
            lines.append(f"| {'direct to upstream':<23} | {conns:>5} | " + _figures(r))
    for conns in (32, 1):
        found = results.compare.get(f"plain/{conns}")
        if found is not None:
            lines += comparison_table("alternating", found)
    lines += [
        "",
        "| proxy memory (access log on)  | VmRSS MiB, baseline -> peak (growth) |",
        "|-------------------------------|--------------------------------------|",
        f"| idle, after start             | {results.rss_idle_kib / 1024:<36.1f} |",
        f"| after {results.proxy_requests:>9,} requests      "
        f"| {results.rss_after_kib / 1024:<36.1f} |",
    ]
    for t in results.transfers:
        label = f"during a {t.size // MIB} MiB {t.what}"
        figures = (
            f"{t.baseline_kib / 1024:.1f} -> {t.peak_kib / 1024:.1f} "
            f"({t.growth_mib:+.1f}) at {t.mib_per_s:.0f} MiB/s"
        )
        lines.append(f"| {label:<29} | {figures:<36} |")
    for what, (traced, rss) in results.footprint.items():
        label = f"per {ENTRIES:,} {what}"
        lines.append(f"| {label:<29} | {f'{traced:.1f} traced, {rss:.1f} of RSS':<36} |")
    return lines


def _tokens(results: Results) -> list[str]:
    lines = ["", "### token vending: POST /_proxy/tokens/derived (proxy, access log on)"]
    found = results.compare.get("tokens/32")
    if found is not None:
        lines += comparison_table("one user's token (cache hits) against flow 1", found)
        lines.append(
            f"upstream /login calls during that load (warm-ups included): "
            f"{results.tokens_wrk_logins}"
        )
    if results.vending:
        lines += [
            "",
            "| vending run (aiohttp client)                    | concurrent | seconds "
            "| /login calls | from cache | after a fetch | wrong tokens | errors |",
            "|-------------------------------------------------|-----------:|--------:"
            "|-------------:|-----------:|--------------:|-------------:|-------:|",
        ]
        for v in results.vending:
            lines.append(
                f"| {v.what:<47} | {v.concurrency:>10} | {v.seconds:>7.2f} "
                f"| {v.fetches:>12} | {v.from_cache:>10} | {v.after_fetch:>13} "
                f"| {v.wrong:>12} | {v.errors:>6} |"
            )
    return lines


def _cache(results: Results) -> list[str]:
    lines = ["", "### response cache: GET /documents (proxy, access log on)", ""]
    lines += _head("proxy", " lookups: hit / miss / error |", "----------------------------:|")
    for key, label in CACHE_ROWS:
        r = results.cache.get(key)
        if r is None:
            continue
        found = results.cache_lookups.get(key)
        lookups = f"{found['hit']} / {found['miss']} / {found['error']}" if found else "-"
        lines.append(f"| {label:<23} | {32:>5} | " + _figures(r) + f" {lookups:>27} |")
    for key, backend in results.cache_backends.items():
        lines.append(f"{key}: {backend}")
    redis = results.cache.get("redis")
    if redis is not None and redis.helper_cpu_s:
        lines.append(
            f"redis-server (not the bench's) used {redis.helper_us_per_request:.0f} us/req "
            "of CPU on top of the proxy's in the redis row"
        )
    return lines


def _tls(results: Results) -> list[str]:
    lines = [
        "",
        "### flow 1 over TLS: GET /documents from nginx over HTTPS (CA made for the run, "
        "no session resumption)",
        "",
    ]
    lines += _head("server", " TLS handshakes / 1,000 req |", "---------------------------:|")
    for conns, group in ((32, results.tls_many), (1, results.tls_one)):
        r = group.get("direct")
        if r is None:
            continue
        accepted, sent = results.tls_handshakes.get(f"direct/{conns}", (0, 0))
        per_k = f"{accepted * 1000 / sent:.3f} ({accepted} in {sent:,})" if sent else "-"
        label = "direct to nginx (TLS)"
        lines.append(f"| {label:<23} | {conns:>5} | " + _figures(r) + f" {per_k:>26} |")
    for conns in (32, 1):
        found = results.compare.get(f"tls/{conns}")
        if found is not None:
            lines += comparison_table("alternating, over TLS", found)
    return lines


def _jwt(results: Results) -> list[str]:
    lines = ["", "### jwt mode: GET /documents, client.auth basic vs jwt (access log on)"]
    found = results.compare.get("jwt/32")
    if found is not None:
        lines += comparison_table("alternating", found)
    if results.jwt_sign_us:
        lines.append(
            f"one ES256 signature, when a user's JWT is not cached: {results.jwt_sign_us:.0f} us"
        )
    return lines


def render(results: Results) -> str:
    m = results.machine
    lines = [
        f"## gini-auth-proxy bench ({'QUICK smoke run' if results.quick else 'full run'}, "
        f"sections: {', '.join(results.sections)})",
        "",
        f"machine: nproc {m['nproc']} | CPU {m['cpu']} | kernel {m['kernel']} | "
        f"Python {m['python']} | aiohttp {m['aiohttp']} | uvloop {m['uvloop']}",
        f"tools: {m['wrk']} | upstream: {m['upstream']}",
        f"code under test: {m['code']}",
        f"load: wrk -t1, X-User-Id set by Lua; single rows: {results.warmup_s} s warm-up "
        f"(discarded) then {results.duration_s} s; alternating rows: as their title says",
    ]
    if "flow1" in results.sections:
        lines += _flow1(results)
    if "tokens" in results.sections:
        lines += _tokens(results)
    if "cache" in results.sections:
        lines += _cache(results)
    if "tls" in results.sections and (results.tls_many or results.compare.get("tls/32")):
        lines += _tls(results)
    if "jwt" in results.sections:
        lines += _jwt(results)
    if results.shed is not None:
        lines += shed_table(results.shed)
    if results.fleet is not None:
        found = results.compare.get("fleet/32")
        lines += fleet_table(results.fleet)
        lines += comparison_table("vending from a warm local cache", found) if found else []
    traced = results.compare.get("tracing/32")
    if traced is not None:
        lines += ["", "### tracing and audit: GET /documents (proxy, access log on)"]
        lines += comparison_table("alternating", traced)
        lines += tracing_table(results.tracing) if results.tracing else []
    lines += ["", *results.notes] if results.notes else []
    lines += [
        "",
        "| target                                                   | measured"
        "                            | result |",
        "|----------------------------------------------------------|"
        "-------------------------------------|--------|",
    ]
    for target, measured, status in results.verdict():
        lines.append(f"| {target:<56} | {measured:<35} | {status:<6} |")
    return "\n".join(lines)
