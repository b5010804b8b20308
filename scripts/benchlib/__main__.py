"""`scripts/bench`: throughput, latency and memory of the proxy against two baseline
forwarders (lean and bare), token vending from the cache, and the response cache.

Sections (`--only`, comma-separated; all by default): flow1 (GET /documents: the proxy against
the lean and the bare forwarder, alternating; direct; memory), tokens (token vending against
flow 1, alternating on one proxy; upstream fetches), cache (response cache), tls (flow 1 from
nginx over HTTPS: proxy, lean and bare alternating, TLS handshakes per 1,000 requests), jwt
(client.auth jwt against basic), shed (an answer shed during a Retry-After pause against a 400),
fleet (token vending with tokens shared through Redis: on against off, Redis against memory,
Gini calls at N replicas), tracing (flow 1 at sample ratios 0, 0.05 and 1, and at 0.05 with the
audit log, against the lean forwarder).
See docs/performance.md for the method. Exit codes: 0 every target met, 3 a target missed,
1 the bench itself failed, 130 interrupted. Every process it starts is stopped on the way out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from . import fleet, instructions, shed, tracing
from .procs import Processes
from .report import SECTIONS, Results, machine_info
from .sections import ROOT, Bench, Timing
from .servers import start_aiohttp_upstream, start_nginx
from .tools import ensure_tool, version_of
from .wrk import Wrk

NGINX_PATHS = ("/usr/sbin/nginx",)
# Sections that live in a module of their own, each with a `section(bench)` function.
MODULE_SECTIONS: dict[str, Callable[[Bench], None]] = {
    "shed": shed.section,
    "fleet": fleet.section,
    "tracing": tracing.section,
}


def _sections(text: str) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in wanted if name not in SECTIONS]
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"sections are {', '.join(SECTIONS)} (comma-separated), not {text!r}"
        )
    return tuple(name for name in SECTIONS if name in wanted)  # always in the bench's order


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"a whole number >= 1, not {text!r}")
    return value


def _timing(args: argparse.Namespace) -> Timing:
    quick = bool(args.quick)
    rounds = args.rounds or (3 if quick else 12)
    return Timing(
        warmup=1 if quick else 2,
        seconds=3 if quick else 10,
        rounds=rounds,
        round_seconds=args.round_seconds or (1 if quick else 2),
        keep=min(args.best or (2 if quick else 3), rounds),
        processes=min(args.processes or (1 if quick else 4), rounds),
    )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short smoke run (a few seconds each)")
    parser.add_argument(
        "--upstream",
        choices=("nginx", "aiohttp"),
        default="nginx",
        help="who answers GET /documents: nginx (default; falls back to aiohttp if it cannot be "
        "installed) or the aiohttp upstream app. /upload and /download are always aiohttp.",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=None,
        help="seconds to wait for other processes to go quiet before each single measurement, "
        "which is repeated (twice at most) when it was contended all the same, and before each "
        "alternating comparison, whose best runs stand in for the quiet ones (default: 120, "
        "0 with --quick)",
    )
    parser.add_argument(
        "--only",
        type=_sections,
        default=None,
        metavar="SECTIONS",
        help="run only these sections, comma-separated: flow1 (GET /documents: proxy, lean and "
        "bare alternating; direct; memory), tokens (token vending against flow 1; upstream "
        "fetches), cache (response cache), tls (proxy, lean and bare alternating to nginx over "
        "HTTPS, handshakes per 1,000 requests), jwt (client.auth jwt against basic), shed (CPU "
        "of an answer shed during a pause against a 400 for a bad user id), fleet (token vending "
        "with the fleet section: on vs off, a Redis hit vs a local one, Gini calls per user "
        "at 1-8 replicas), tracing (flow 1 at sample ratios 0, 0.05 and 1, and 0.05 with the "
        "audit log, against lean); default: all "
        "(with --profile: flow1)",
    )
    parser.add_argument(
        "--rounds",
        type=_positive,
        default=None,
        help="alternating comparisons: rounds of one run per contender (default: 12, 3 with "
        "--quick)",
    )
    parser.add_argument(
        "--round-seconds",
        type=_positive,
        default=None,
        help="alternating comparisons: seconds per run (default: 2, 1 with --quick)",
    )
    parser.add_argument(
        "--best",
        type=_positive,
        default=None,
        help="alternating comparisons: each side's figure is the mean of its best this many "
        "runs, split among its processes, at least one each (default: 3, 2 with --quick)",
    )
    parser.add_argument(
        "--processes",
        type=_positive,
        default=None,
        help="alternating comparisons between servers: processes per side, taking turns from "
        "round to round, each contributing its best runs (default: 4, 1 with --quick)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of measuring, profile the proxy (access log on and off) and the lean and "
        "bare forwarders under load with py-spy and print the hot functions; with --only tokens or "
        "cache, the token endpoint or the proxy with a memory response cache",
    )
    parser.add_argument(
        "--instructions",
        nargs="?",
        const=",".join(instructions.NAMES),
        type=_servers,
        metavar="SERVERS",
        help="instead of measuring time, count CPU instructions per flow-1 request under "
        "callgrind (repeatable to about 1 %%; about a minute per server); SERVERS, comma-"
        f"separated, from {', '.join(instructions.NAMES)} (default: all); for A/B-testing "
        "the hot path",
    )
    return parser.parse_args(argv)


def _servers(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in instructions.NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown server {', '.join(unknown) or '(none)'}; choose from "
            + ", ".join(instructions.NAMES)
        )
    return names


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _code_version() -> str:
    """The commit under test, and whether proxy/ differs from it (figures are for that tree)."""
    git = shutil.which("git")
    if git is None:
        return "unknown (no git)"
    head = subprocess.run(  # noqa: S603 - fixed argv
        [git, "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    changed = subprocess.run(  # noqa: S603 - fixed argv
        [git, "-C", str(ROOT), "status", "--porcelain", "--", "proxy"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    return f"{head or '?'}" + (
        f" + {len(changed)} uncommitted change(s) in proxy/" if changed else ""
    )


def run(args: argparse.Namespace, procs: Processes, tmp: Path) -> Results:
    wrk_path = ensure_tool("wrk", "wrk")
    if wrk_path is None:
        raise RuntimeError("wrk is required: apt-get install -y wrk")
    nginx_path = None
    if args.upstream == "nginx":
        nginx_path = ensure_tool("nginx", "nginx-light", NGINX_PATHS)
        if nginx_path is None:
            print("bench: nginx unavailable; GET /documents is served by the aiohttp upstream")
    timing = _timing(args)
    max_wait = args.max_wait if args.max_wait is not None else (0 if args.quick else 120)
    wrk = Wrk(wrk_path, tmp, procs, max_wait=max_wait, retries=2 if max_wait else 0)
    sections = args.only or (("flow1",) if args.profile else SECTIONS)

    aio = start_aiohttp_upstream(procs, ROOT, tmp)
    upstream = start_nginx(procs, nginx_path, tmp, aio) if nginx_path else aio
    if args.instructions:
        if not instructions.available():
            raise RuntimeError("--instructions needs valgrind: apt-get install -y valgrind")
        n1, n2 = (100, 300) if args.quick else (200, 1000)
        counts = instructions.count(ROOT, tmp, upstream.url, procs, n1, n2, args.instructions)
        print("\n" + instructions.table(counts))
        raise SystemExit(0)
    upstream_version = (
        f"{version_of([nginx_path, '-v']).removeprefix('nginx version: ')} for /documents, "
        "aiohttp app for /upload, /download and /login"
        if nginx_path
        else "aiohttp app for everything"
    )
    results = Results(
        machine_info(
            version_of([wrk_path, "-v"]).split(" Copyright")[0], upstream_version, _code_version()
        ),
        quick=args.quick,
        warmup_s=timing.warmup,
        duration_s=timing.seconds,
        sections=sections,
    )
    bench = Bench(args, procs, tmp, wrk, results, aio, upstream, timing)
    if args.profile:  # the module sections have no profile of their own
        bench.profiles(tuple(name for name in sections if name not in MODULE_SECTIONS))
        return results
    if "flow1" in sections:
        bench.flow1()
    if "tokens" in sections:
        bench.tokens()
    if "cache" in sections:
        bench.cache()
    if "tls" in sections:
        bench.tls(nginx_path or ensure_tool("nginx", "nginx-light", NGINX_PATHS))
    if "jwt" in sections:
        bench.jwt()
    for name in [name for name in sections if name in MODULE_SECTIONS]:
        MODULE_SECTIONS[name](bench)
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # Explicitly, also for SIGINT: a shell starting the bench in the background ignores it.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="gini-bench-"))
    try:
        results = run(args, procs, tmp)
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping every process it started", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as exc:
        print(f"bench: failed: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        if args.keep:
            print(f"bench: logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    if args.profile:
        print("\n\n".join(results.profiles))
        return 0
    print(results.table())
    if args.json is not None:
        args.json.write_text(json.dumps(results.as_json(), indent=2) + "\n")
        print(f"\nbench: figures written to {args.json}")
    return 0 if results.passed() else 3


if __name__ == "__main__":
    raise SystemExit(main())
