"""The tracing section: flow 1 with OpenTelemetry tracing at several sample ratios, and with
tracing at 0.05 plus the audit log, against the lean forwarder.

Every proxy exports to one OTLP/HTTP sink (`otlp_sink.py`) that takes and discards the spans;
wrk sends no `traceparent`, so `sample_ratio` alone decides which requests are traced. The
audit proxies write their records to files in the run's temporary folder. All sides run in
one alternating comparison (compare.py), so their req/s and their CPU per request come from
the same minutes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .compare import Contender
from .probe import get_json
from .procs import Processes
from .servers import Server, start_helper, start_lean

if TYPE_CHECKING:
    from .sections import Bench

RATIOS = (("ratio0", 0.0), ("ratio005", 0.05), ("ratio1", 1.0))
AUDIT_RATIO = 0.05
LABELS = {
    "off": "tracing and audit off",
    "ratio0": "tracing, ratio 0",
    "ratio005": "tracing, ratio 0.05",
    "ratio1": "tracing, ratio 1",
    "audit": "tracing 0.05 + audit log",
    "lean": "lean forwarder",
}


@dataclass
class TracingResult:
    exports: int = 0  # OTLP exports the sink received over the section
    export_bytes: int = 0
    audit_lines: int = 0  # records the audit proxies wrote


def tracing_yaml(endpoint: str, ratio: float, audit: Path | None = None) -> str:
    text = f'tracing:\n  otlp_endpoint: "{endpoint}"\n  sample_ratio: {ratio}\n'
    if audit is not None:
        text += f'audit:\n  path: "{audit}"\n'
    return text


def start_sink(procs: Processes, root: Path, tmp: Path) -> Server:
    return start_helper(procs, root, tmp, "OTLP sink", "otlp_sink", "/_bench/exports", "otlp-sink")


def _lines(paths: list[Path]) -> int:
    return sum(path.read_bytes().count(b"\n") for path in paths if path.exists())


def section(bench: Bench) -> None:
    """`--only tracing`: every side started, `timing.processes` processes each, alternating."""
    from .sections import ROOT, stop  # noqa: PLC0415 - sections imports the report, which imports this

    sink = start_sink(bench.procs, ROOT, bench.tmp)
    endpoint = sink.url + "/v1/traces"
    audit_files: list[Path] = []

    def audited() -> Server:
        path = bench.tmp / f"audit-{len(audit_files) + 1}.jsonl"
        audit_files.append(path)
        return bench._proxy(tag="audit", extra=tracing_yaml(endpoint, AUDIT_RATIO, path))

    def traced(key: str, ratio: float) -> Callable[[], Server]:
        return lambda: bench._proxy(tag=key, extra=tracing_yaml(endpoint, ratio))

    starters: dict[str, Callable[[], Server]] = {
        "off": lambda: bench._proxy(tag="tracing-off"),
        **{key: traced(key, ratio) for key, ratio in RATIOS},
        "audit": audited,
        "lean": lambda: start_lean(bench.procs, ROOT, bench.tmp, bench.upstream.url),
    }
    servers: list[Server] = []
    contenders: list[Contender] = []
    try:
        for key, start in starters.items():
            for server in [start() for _ in range(bench.timing.processes)]:
                servers.append(server)
                contenders.append(
                    Contender(key, LABELS[key], server.url + "/documents", server.pid)
                )
        bench.results.compare["tracing/32"] = bench._alternate(contenders, 32)
    finally:
        for server in reversed(servers):
            stop(bench.procs, server)
        received = get_json(sink.url + "/_bench/exports")
        stop(bench.procs, sink)
    result = bench.results.tracing = TracingResult(
        int(received["exports"]), int(received["bytes"]), _lines(audit_files)
    )
    print(
        f"bench:   OTLP exports received: {result.exports} ({result.export_bytes:,} B); "
        f"audit records written: {result.audit_lines:,}",
        flush=True,
    )


def table(result: TracingResult) -> list[str]:
    return [
        f"OTLP exports the sink received (all proxies, warm-ups included): {result.exports} "
        f"({result.export_bytes:,} B); audit records written: {result.audit_lines:,}"
    ]
