"""Every figure of a bench run (`Results`), the machine it ran on, and its JSON form.

The verdict against the targets is in `verdict.py`, the tables in `tables.py`.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from .compare import Comparison
from .fleet import FleetResult
from .loop import uses_uvloop
from .shed import ShedResult
from .tables import render
from .tracing import TracingResult
from .transfer import TransferResult
from .vending import VendRun
from .verdict import verdict_rows
from .wrk import WrkResult

SECTIONS = ("flow1", "tokens", "cache", "tls", "jwt", "shed", "fleet", "tracing")


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
    # alternating comparisons (compare.py), by "<plain|tls|tokens>/<connections>"
    compare: dict[str, Comparison] = field(default_factory=dict)
    many: dict[str, WrkResult] = field(default_factory=dict)  # direct to upstream, 32 conns
    one: dict[str, WrkResult] = field(default_factory=dict)  # direct to upstream, 1 conn
    proxy_requests: int = 0
    rss_idle_kib: int = 0
    rss_after_kib: int = 0
    transfers: list[TransferResult] = field(default_factory=list)
    # per 10k cached tokens, remembered identities, signed JWTs: (MiB traced, MiB RSS growth)
    footprint: dict[str, tuple[float, float]] = field(default_factory=dict)
    profiles: list[str] = field(default_factory=list)
    # token vending: /login calls during the wrk load on one user's token, and the client runs
    tokens_wrk_logins: int = 0
    vending: list[VendRun] = field(default_factory=list)
    # response cache: wrk per backend ("none" = the same proxy without the cache)
    cache: dict[str, WrkResult] = field(default_factory=dict)
    cache_backends: dict[str, str] = field(default_factory=dict)
    cache_lookups: dict[str, dict[str, int]] = field(default_factory=dict)  # hit/miss/error
    # wrk straight to nginx over TLS, and per "direct/conns" the (TLS connections nginx
    # accepted, requests sent), warm-ups included
    tls_many: dict[str, WrkResult] = field(default_factory=dict)
    tls_one: dict[str, WrkResult] = field(default_factory=dict)
    tls_handshakes: dict[str, tuple[int, int]] = field(default_factory=dict)
    # jwt mode (its comparison is compare["jwt/32"]): what one signature costs when a user's
    # JWT is not cached
    jwt_sign_us: float = 0.0
    # upstream protection: a shed answer's CPU against a 400's, on one paused proxy
    shed: ShedResult | None = None
    # fleet: Gini calls per user at N replicas, a Redis hit against a local one (its vending
    # comparison is compare["fleet/32"])
    fleet: FleetResult | None = None
    # tracing: what the OTLP sink received and the audit proxies wrote (the comparison of the
    # sample ratios, the audit log and the lean forwarder is compare["tracing/32"])
    tracing: TracingResult | None = None
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        for group in ("many", "one", "cache", "tls_many", "tls_one"):
            for key, result in getattr(self, group).items():
                data[group][key]["rps"] = result.rps
        for key, comparison in self.compare.items():
            for name, side in comparison.sides.items():
                data["compare"][key]["sides"][name]["summary"] = side.summary()
            data["compare"][key]["versus"] = {
                f"{a}/{b}": {
                    "rps_ratio": comparison.rps_ratio(a, b),
                    "p50_diff_ms": comparison.p50_diff_ms(a, b),
                }
                for a in comparison.sides
                for b in comparison.sides
                if a != b
            }
        for index, transfer in enumerate(self.transfers):
            data["transfers"][index]["growth_mib"] = transfer.growth_mib
        if self.shed is not None:
            data["shed"]["cpu_us_per_answer"] = {
                "shed": self.shed.shed_cpu_us,
                "refused": self.shed.refused_cpu_us,
                "ratio": self.shed.ratio,
                "breaker": self.shed.breaker_cpu_us,
                "breaker_ratio": self.shed.breaker_ratio,
            }
        data["verdict"] = [list(row) for row in self.verdict()]
        data["passed"] = self.passed()
        return data

    def verdict(self) -> list[tuple[str, str, str]]:
        """(target, measured, PASS|FAIL|info|n/a) for each target; information rows are
        indented by two spaces."""
        return verdict_rows(self)

    def passed(self) -> bool:
        return all(
            status != "FAIL" for target, _, status in self.verdict() if not target.startswith(" ")
        )

    def table(self) -> str:
        return render(self)
