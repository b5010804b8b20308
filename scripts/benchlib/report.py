"""The machine description, the results table and the verdict against the targets."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from .loop import uses_uvloop
from .transfer import MIB, TransferResult
from .upstream import DOCUMENTS
from .vending import VendRun
from .wrk import WrkResult

TARGET_RATIO = 0.8
TARGET_ADDED_P50_MS = 0.35
TARGET_RSS_MIB = 80.0
TARGET_RSS_REQUESTS = 100_000
TARGET_GROWTH_MIB = 20.0
TARGET_JWT_RATIO = 0.95
SECTIONS = ("flow1", "tokens", "cache", "tls", "jwt")

ROWS = (
    ("direct", "direct to upstream"),
    ("bare", "bare aiohttp forwarder"),
    ("proxy_log_on", "proxy, access log on"),
    ("proxy_log_off", "proxy, access log off"),
)
CACHE_ROWS = (
    ("none", "no response cache"),
    ("memory", "response cache, memory"),
    ("redis", "response cache, redis"),
    ("sqlite", "response cache, sqlite"),
)
_HEAD = (
    "| server CPU us/req | other load, steal (cores) |",
    "|------------------:|--------------------------:|",
)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info(wrk_version: str, upstream_version: str, code: str) -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": _version("aiohttp"),
        "uvloop": f"yes ({_version('uvloop')})" if uses_uvloop() else "no",
        "wrk": wrk_version,
        "upstream": upstream_version,
        "code": code,
    }


@dataclass
class Results:
    machine: dict[str, str]
    quick: bool
    warmup_s: int
    duration_s: int
    sections: tuple[str, ...] = SECTIONS
    many: dict[str, WrkResult] = field(default_factory=dict)  # 32 connections
    one: dict[str, WrkResult] = field(default_factory=dict)  # 1 connection
    proxy_requests: int = 0
    rss_idle_kib: int = 0
    rss_after_kib: int = 0
    transfers: list[TransferResult] = field(default_factory=list)
    profiles: list[str] = field(default_factory=list)
    # token vending: wrk on one user's token (all cache hits), its /login calls, the client runs
    tokens_wrk: WrkResult | None = None
    tokens_wrk_logins: int = 0
    vending: list[VendRun] = field(default_factory=list)
    # response cache: wrk per backend ("none" = the same proxy without the cache)
    cache: dict[str, WrkResult] = field(default_factory=dict)
    cache_backends: dict[str, str] = field(default_factory=dict)
    cache_lookups: dict[str, dict[str, int]] = field(default_factory=dict)  # hit/miss/error
    # flow 1 over TLS (nginx with a CA made for the run): wrk per server, and per
    # "server/conns" the (TLS connections nginx accepted, requests sent), warm-ups included
    tls_many: dict[str, WrkResult] = field(default_factory=dict)
    tls_one: dict[str, WrkResult] = field(default_factory=dict)
    tls_handshakes: dict[str, tuple[int, int]] = field(default_factory=dict)
    tls_plain: dict[str, WrkResult] = field(default_factory=dict)  # same servers, plain HTTP
    # jwt mode: the proxy with client.auth basic and jwt (best of two runs each), and what one
    # signature costs when a user's JWT is not cached
    jwt: dict[str, WrkResult] = field(default_factory=dict)
    jwt_sign_us: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        for group in ("many", "one", "cache", "tls_many", "tls_one", "tls_plain", "jwt"):
            for key, result in getattr(self, group).items():
                data[group][key]["rps"] = result.rps
        if self.tokens_wrk is not None:
            data["tokens_wrk"]["rps"] = self.tokens_wrk.rps
        for index, transfer in enumerate(self.transfers):
            data["transfers"][index]["growth_mib"] = transfer.growth_mib
        data["verdict"] = [list(row) for row in self.verdict()]
        return data

    def verdict(self) -> list[tuple[str, str, str]]:
        """(target, measured, PASS|FAIL|n/a) for each target."""
        rows: list[tuple[str, str, str]] = []
        bare, proxy = self.many.get("bare"), self.many.get("proxy_log_on")
        if bare and proxy and bare.rps:
            ratio = proxy.rps / bare.rps
            rows.append(
                (
                    f"proxy req/s >= {TARGET_RATIO} x bare (32 conns, access log on)",
                    f"{ratio:.2f} x ({proxy.rps:.0f} / {bare.rps:.0f})",
                    _ok(ratio >= TARGET_RATIO),
                )
            )
        off = self.many.get("proxy_log_off")
        if bare and off and bare.rps:
            ratio = off.rps / bare.rps
            rows.append(
                (
                    f"  same with access log off (information, {TARGET_RATIO} x)",
                    f"{ratio:.2f} x ({off.rps:.0f} / {bare.rps:.0f})",
                    _ok(ratio >= TARGET_RATIO),
                )
            )
        direct, one = self.one.get("direct"), self.one.get("proxy_log_on")
        if direct and one:
            added = one.p50_ms - direct.p50_ms
            rows.append(
                (
                    f"added p50 at 1 conn <= {TARGET_ADDED_P50_MS} ms (proxy - direct)",
                    f"{added:.3f} ms ({one.p50_ms:.3f} - {direct.p50_ms:.3f})",
                    _ok(added <= TARGET_ADDED_P50_MS),
                )
            )
            bare_one = self.one.get("bare")
            if bare_one:
                rows.append(
                    (
                        "  of which bare - direct p50 at 1 conn (information)",
                        f"{bare_one.p50_ms - direct.p50_ms:.3f} ms",
                        "info",
                    )
                )
                rows.append(
                    (
                        "  and proxy - bare p50 at 1 conn (information)",
                        f"{one.p50_ms - bare_one.p50_ms:.3f} ms",
                        "info",
                    )
                )
        if self.rss_after_kib:
            mib = self.rss_after_kib / 1024
            enough = self.proxy_requests >= TARGET_RSS_REQUESTS
            rows.append(
                (
                    f"RSS <= {TARGET_RSS_MIB:.0f} MiB after >= 100k requests",
                    f"{mib:.1f} MiB after {self.proxy_requests:,} requests",
                    _ok(mib <= TARGET_RSS_MIB) if enough else "n/a (too few requests)",
                )
            )
        for transfer in self.transfers:
            rows.append(
                (
                    f"peak RSS growth < {TARGET_GROWTH_MIB:.0f} MiB, "
                    f"{transfer.size // MIB} MiB {transfer.what}",
                    f"{transfer.growth_mib:.1f} MiB",
                    _ok(transfer.growth_mib < TARGET_GROWTH_MIB),
                )
            )
        for run, label in zip(self.vending, ("spread", "burst"), strict=False):
            clean = run.errors == 0 and run.wrong == 0
            rows.append(
                (
                    f"token fetches = {run.users} for {run.requests:,} vending requests ({label})",
                    f"{run.fetches} ({run.errors} errors, {run.wrong} wrong tokens)",
                    _ok(run.fetches == run.users and clean),
                )
            )
        tls_bare, tls_proxy = self.tls_many.get("bare"), self.tls_many.get("proxy_log_on")
        if tls_bare and tls_proxy and tls_bare.rps:
            ratio = tls_proxy.rps / tls_bare.rps
            rows.append(
                (
                    "  proxy vs bare req/s over TLS, 32 conns (information)",
                    f"{ratio:.2f} x ({tls_proxy.rps:.0f} / {tls_bare.rps:.0f})",
                    "info",
                )
            )
        uncached = self.cache.get("none")
        for key, _ in CACHE_ROWS[1:]:
            cached = self.cache.get(key)
            if uncached and cached and uncached.rps:
                ratio = cached.rps / uncached.rps
                rows.append(
                    (
                        f"  cached req/s vs uncached, {key} (information)",
                        f"{ratio:.2f} x ({cached.rps:.0f} / {uncached.rps:.0f})",
                        "info",
                    )
                )
        basic, signed = self.jwt.get("basic"), self.jwt.get("jwt")
        if basic and signed and basic.rps:
            ratio = signed.rps / basic.rps
            rows.append(
                (
                    f"jwt mode req/s >= {TARGET_JWT_RATIO} x basic mode (32 conns)",
                    f"{ratio:.2f} x ({signed.rps:.0f} / {basic.rps:.0f})",
                    _ok(ratio >= TARGET_JWT_RATIO),
                )
            )
        return rows

    def passed(self) -> bool:
        return all(
            status != "FAIL" for target, _, status in self.verdict() if not target.startswith(" ")
        )

    def table(self) -> str:
        m = self.machine
        lines = [
            f"## gini-auth-proxy bench ({'QUICK smoke run' if self.quick else 'full run'}, "
            f"sections: {', '.join(self.sections)})",
            "",
            f"machine: nproc {m['nproc']} | CPU {m['cpu']} | kernel {m['kernel']} | "
            f"Python {m['python']} | aiohttp {m['aiohttp']} | uvloop {m['uvloop']}",
            f"tools: {m['wrk']} | upstream: {m['upstream']}",
            f"code under test: {m['code']}",
            f"load: wrk -t1, X-User-Id set by Lua; "
            f"{self.warmup_s} s warm-up (discarded) then {self.duration_s} s per row",
        ]
        if "flow1" in self.sections:
            lines += self._flow1()
        if "tokens" in self.sections:
            lines += self._tokens()
        if "cache" in self.sections:
            lines += self._cache()
        if "tls" in self.sections and self.tls_many:
            lines += self._tls()
        if "jwt" in self.sections:
            lines += self._jwt()
        lines += ["", *self.notes] if self.notes else []
        lines += [
            "",
            "| target                                                   | measured"
            "                          | result |",
            "|----------------------------------------------------------|"
            "-----------------------------------|--------|",
        ]
        for target, measured, status in self.verdict():
            lines.append(f"| {target:<56} | {measured:<33} | {status:<6} |")
        return "\n".join(lines)

    def _flow1(self) -> list[str]:
        lines = [
            "",
            f"### flow 1: GET /documents ({len(DOCUMENTS)} B of JSON)",
            "",
            "| server                  | conns |   req/s | p50 ms | p90 ms | p99 ms | errors "
            + _HEAD[0],
            "|-------------------------|------:|--------:|-------:|-------:|-------:|-------:"
            + _HEAD[1],
        ]
        for conns, group in ((32, self.many), (1, self.one)):
            for key, label in ROWS:
                r = group.get(key)
                if r is not None:
                    lines.append(f"| {label:<23} | {conns:>5} | " + _figures(r))
        lines += [
            "",
            "| proxy memory (access log on)  | VmRSS MiB, baseline -> peak (growth) |",
            "|-------------------------------|--------------------------------------|",
            f"| idle, after start             | {self.rss_idle_kib / 1024:<36.1f} |",
            f"| after {self.proxy_requests:>9,} requests      "
            f"| {self.rss_after_kib / 1024:<36.1f} |",
        ]
        for t in self.transfers:
            label = f"during a {t.size // MIB} MiB {t.what}"
            figures = (
                f"{t.baseline_kib / 1024:.1f} -> {t.peak_kib / 1024:.1f} "
                f"({t.growth_mib:+.1f}) at {t.mib_per_s:.0f} MiB/s"
            )
            lines.append(f"| {label:<29} | {figures:<36} |")
        return lines

    def _tokens(self) -> list[str]:
        lines = [
            "",
            "### token vending: POST /_proxy/tokens/derived (proxy, access log on)",
            "",
            "| load                    | conns |   req/s | p50 ms | p90 ms | p99 ms | errors "
            + _HEAD[0],
            "|-------------------------|------:|--------:|-------:|-------:|-------:|-------:"
            + _HEAD[1],
        ]
        r = self.tokens_wrk
        if r is not None:
            lines.append(f"| {'one user, cache hits':<23} | {32:>5} | " + _figures(r))
            lines.append(
                f"upstream /login calls during that load (warm-up included): "
                f"{self.tokens_wrk_logins}"
            )
        if self.vending:
            lines += [
                "",
                "| vending run (aiohttp client)                    | concurrent | seconds "
                "| /login calls | from cache | after a fetch | wrong tokens | errors |",
                "|-------------------------------------------------|-----------:|--------:"
                "|-------------:|-----------:|--------------:|-------------:|-------:|",
            ]
            for v in self.vending:
                lines.append(
                    f"| {v.what:<47} | {v.concurrency:>10} | {v.seconds:>7.2f} "
                    f"| {v.fetches:>12} | {v.from_cache:>10} | {v.after_fetch:>13} "
                    f"| {v.wrong:>12} | {v.errors:>6} |"
                )
        return lines

    def _cache(self) -> list[str]:
        lines = [
            "",
            "### response cache: GET /documents (proxy, access log on)",
            "",
            "| proxy                   | conns |   req/s | p50 ms | p90 ms | p99 ms | errors "
            + _HEAD[0]
            + " lookups: hit / miss / error |",
            "|-------------------------|------:|--------:|-------:|-------:|-------:|-------:"
            + _HEAD[1]
            + "----------------------------:|",
        ]
        for key, label in CACHE_ROWS:
            r = self.cache.get(key)
            if r is None:
                continue
            found = self.cache_lookups.get(key)
            lookups = f"{found['hit']} / {found['miss']} / {found['error']}" if found else "-"
            lines.append(f"| {label:<23} | {32:>5} | " + _figures(r) + f" {lookups:>27} |")
        for key, backend in self.cache_backends.items():
            lines.append(f"{key}: {backend}")
        redis = self.cache.get("redis")
        if redis is not None and redis.helper_cpu_s:
            lines.append(
                f"redis-server (not the bench's) used {redis.helper_us_per_request:.0f} us/req "
                "of CPU on top of the proxy's in the redis row"
            )
        return lines

    def _tls(self) -> list[str]:
        lines = [
            "",
            "### flow 1 over TLS: GET /documents from nginx over HTTPS (CA made for the run, "
            "no session resumption)",
            "",
            "| server                  | conns |   req/s | p50 ms | p90 ms | p99 ms | errors "
            + _HEAD[0]
            + " TLS handshakes / 1,000 req |",
            "|-------------------------|------:|--------:|-------:|-------:|-------:|-------:"
            + _HEAD[1]
            + "---------------------------:|",
        ]
        labels = dict(ROWS)
        for key in ("bare", "proxy_log_on"):
            r = self.tls_plain.get(key)
            if r is not None:
                label = "bare, plain HTTP" if key == "bare" else "proxy, plain HTTP"
                lines.append(f"| {label:<23} | {32:>5} | " + _figures(r) + f" {'(no TLS)':>26} |")
        for conns, group in ((32, self.tls_many), (1, self.tls_one)):
            for key in ("direct", "bare", "proxy_log_on"):
                r = group.get(key)
                if r is None:
                    continue
                accepted, sent = self.tls_handshakes.get(f"{key}/{conns}", (0, 0))
                per_k = f"{accepted * 1000 / sent:.3f} ({accepted} in {sent:,})" if sent else "-"
                lines.append(
                    f"| {labels[key]:<23} | {conns:>5} | " + _figures(r) + f" {per_k:>26} |"
                )
        return lines

    def _jwt(self) -> list[str]:
        lines = [
            "",
            "### jwt mode: GET /documents, client.auth basic vs jwt (access log on, best of 2)",
            "",
            "| proxy                   | conns |   req/s | p50 ms | p90 ms | p99 ms | errors "
            + _HEAD[0],
            "|-------------------------|------:|--------:|-------:|-------:|-------:|-------:"
            + _HEAD[1],
        ]
        for key, label in (("basic", "client.auth basic"), ("jwt", "client.auth jwt")):
            r = self.jwt.get(key)
            if r is not None:
                lines.append(f"| {label:<23} | {32:>5} | " + _figures(r))
        if self.jwt_sign_us:
            lines.append(
                f"one ES256 signature, when a user's JWT is not cached: {self.jwt_sign_us:.0f} us"
            )
        return lines


def _figures(r: WrkResult) -> str:
    """The columns after `conns` of a wrk row."""
    return (
        f"{r.rps:>7.0f} | {r.p50_ms:>6.3f} | {r.p90_ms:>6.3f} | {r.p99_ms:>6.3f} | "
        f"{r.errors:>6} | {r.cpu_us_per_request:>17.0f} | "
        f"{f'{r.other_cores:.2f}, {r.steal_cores:.2f}':>25} |"
    )


def _ok(condition: bool) -> str:
    return "PASS" if condition else "FAIL"
