"""`scripts/bench`: throughput, latency and memory of the proxy against a bare forwarder.

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
import time
from pathlib import Path
from types import FrameType

from .procs import Processes, vm_rss_kib
from .profile import profile
from .report import TARGET_RSS_REQUESTS, Results, machine_info
from .servers import Server, start_aiohttp_upstream, start_bare, start_nginx, start_proxy
from .tools import ensure_tool, version_of
from .transfer import MIB, measure_transfers
from .wrk import Wrk

ROOT = Path(__file__).resolve().parents[2]
NGINX_PATHS = ("/usr/sbin/nginx",)


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
        help="seconds to wait for other processes to go quiet before each measurement, which "
        "is repeated (twice at most) when it was contended all the same (default: 120, "
        "0 with --quick)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of measuring, profile the proxy (access log on) and the bare forwarder "
        "under load with py-spy and print the hot functions",
    )
    return parser.parse_args(argv)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _stop(procs: Processes, server: Server) -> None:
    procs.stop(server.proc, timeout=15)
    code = server.proc.returncode
    if code not in (0, -signal.SIGTERM):
        print(f"bench: warning: {server.name} exited with code {code}", flush=True)


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


def _log_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def run(args: argparse.Namespace, procs: Processes, tmp: Path) -> Results:
    wrk_path = ensure_tool("wrk", "wrk")
    if wrk_path is None:
        raise RuntimeError("wrk is required: apt-get install -y wrk")
    nginx_path = None
    if args.upstream == "nginx":
        nginx_path = ensure_tool("nginx", "nginx-light", NGINX_PATHS)
        if nginx_path is None:
            print("bench: nginx unavailable; GET /documents is served by the aiohttp upstream")
    warmup, seconds = (1, 3) if args.quick else (2, 10)
    max_wait = args.max_wait if args.max_wait is not None else (0 if args.quick else 120)
    wrk = Wrk(wrk_path, tmp, procs, max_wait=max_wait, retries=2 if max_wait else 0)

    aio = start_aiohttp_upstream(procs, ROOT, tmp)
    upstream = start_nginx(procs, nginx_path, tmp, aio) if nginx_path else aio
    upstream_version = (
        f"{version_of([nginx_path, '-v']).removeprefix('nginx version: ')} for /documents, "
        "aiohttp app for /upload and /download"
        if nginx_path
        else "aiohttp app for everything"
    )
    results = Results(
        machine_info(
            version_of([wrk_path, "-v"]).split(" Copyright")[0], upstream_version, _code_version()
        ),
        quick=args.quick,
        warmup_s=warmup,
        duration_s=seconds,
    )

    if args.profile:
        for which in ("log-on", "log-off", "bare"):
            if which == "bare":
                server = start_bare(procs, ROOT, tmp, upstream.url)
            else:
                server = start_proxy(procs, ROOT, tmp, upstream.url, access_log=which == "log-on")
            results.profiles.append(profile(procs, wrk, server, tmp, warmup, seconds + 5))
            _stop(procs, server)
        return results

    def measure(server: Server, key: str) -> None:
        print(f"bench: {server.name}", flush=True)
        url = server.url + "/documents"
        results.many[key] = wrk.measure(url, 32, warmup, seconds, server.pid)
        results.one[key] = wrk.measure(url, 1, warmup, seconds, server.pid)

    measure(upstream, "direct")
    bare = start_bare(procs, ROOT, tmp, upstream.url)
    measure(bare, "bare")
    _stop(procs, bare)

    proxy = start_proxy(procs, ROOT, tmp, upstream.url, access_log=True)
    time.sleep(0.5)
    results.rss_idle_kib = vm_rss_kib(proxy.pid)
    measure(proxy, "proxy_log_on")
    url = proxy.url + "/documents"
    while not args.quick and wrk.sent[url] < TARGET_RSS_REQUESTS:
        extra = wrk.run(url, 32, 5)
        print(f"bench:   +{extra.requests} requests to pass 100k", flush=True)
    results.proxy_requests = wrk.sent[url]
    results.rss_after_kib = vm_rss_kib(proxy.pid)
    print(
        f"bench:   VmRSS after {results.proxy_requests:,} requests: "
        f"{results.rss_after_kib / 1024:.1f} MiB",
        flush=True,
    )
    results.transfers = measure_transfers(proxy.url, proxy.pid, 30 * MIB, 40 * MIB)
    _stop(procs, proxy)
    lines = _log_lines(tmp / "proxy-log-on.stdout")
    print(f"bench:   access log: {lines:,} lines written", flush=True)

    proxy_off = start_proxy(procs, ROOT, tmp, upstream.url, access_log=False)
    measure(proxy_off, "proxy_log_off")
    _stop(procs, proxy_off)
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
