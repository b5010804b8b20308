"""`scripts/bench`: throughput, latency and memory of the proxy against a bare forwarder,
token vending from the cache, and the response cache.

Sections (`--only`, comma-separated; all by default): flow1 (GET /documents direct, bare,
proxy with and without access log; memory), tokens (token vending), cache (response cache),
tls (GET /documents from nginx over HTTPS: bare and proxy, TLS handshakes per 1,000 requests),
jwt (client.auth jwt against basic).
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

from .cpu import find_process
from .jwt_mode import sign_cost_us, write_key
from .probe import cache_states, counter, get_json, redis_answers
from .procs import Processes, vm_rss_kib
from .profile import profile
from .report import SECTIONS, TARGET_RSS_REQUESTS, Results, machine_info
from .servers import Server, start_aiohttp_upstream, start_bare, start_nginx, start_proxy
from .tls import start_nginx_tls
from .tools import ensure_tool, version_of
from .transfer import MIB, measure_transfers
from .vending import PATH as TOKENS_PATH
from .vending import measure_vending
from .wrk import Wrk

ROOT = Path(__file__).resolve().parents[2]
NGINX_PATHS = ("/usr/sbin/nginx",)
REDIS = ("127.0.0.1", 6379)
REDIS_URL = "redis://127.0.0.1:6379/0"


def _sections(text: str) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in wanted if name not in SECTIONS]
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"sections are {', '.join(SECTIONS)} (comma-separated), not {text!r}"
        )
    return tuple(name for name in SECTIONS if name in wanted)  # always in the bench's order


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
    parser.add_argument(
        "--only",
        type=_sections,
        default=None,
        metavar="SECTIONS",
        help="run only these sections, comma-separated: flow1 (GET /documents: direct, bare, "
        "proxy; memory), tokens (token vending), cache (response cache), tls (bare and proxy "
        "to nginx over HTTPS, handshakes per 1,000 requests), jwt (client.auth jwt against "
        "basic); default: all (with --profile: flow1)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of measuring, profile the proxy (access log on and off) and the bare "
        "forwarder under load with py-spy and print the hot functions; with --only tokens or "
        "cache, the token endpoint or the proxy with a memory response cache",
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
    sections = args.only or (("flow1",) if args.profile else SECTIONS)

    aio = start_aiohttp_upstream(procs, ROOT, tmp)
    upstream = start_nginx(procs, nginx_path, tmp, aio) if nginx_path else aio
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
        warmup_s=warmup,
        duration_s=seconds,
        sections=sections,
    )
    bench = _Bench(args, procs, tmp, wrk, results, aio, upstream, warmup, seconds)
    if args.profile:
        bench.profiles(sections)
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
    return results


class _Bench:
    """The sections of one bench run, sharing its upstream, wrk and results."""

    def __init__(
        self,
        args: argparse.Namespace,
        procs: Processes,
        tmp: Path,
        wrk: Wrk,
        results: Results,
        aio: Server,
        upstream: Server,
        warmup: int,
        seconds: int,
    ):
        self.args = args
        self.procs = procs
        self.tmp = tmp
        self.wrk = wrk
        self.results = results
        self.aio = aio  # /login, /upload, /download
        self.upstream = upstream  # what the servers under test forward to (nginx or aio)
        self.warmup = warmup
        self.seconds = seconds

    def _proxy(
        self, *, access_log: bool = True, cache_backend: str | None = None, tag: str | None = None
    ) -> Server:
        return start_proxy(
            self.procs,
            ROOT,
            self.tmp,
            self.upstream.url,
            access_log=access_log,
            cache_backend=cache_backend,
            tag=tag,
        )

    def profiles(self, sections: tuple[str, ...]) -> None:
        results, procs, tmp, wrk = self.results, self.procs, self.tmp, self.wrk
        for section in sections:
            if section == "flow1":
                for which in ("log-on", "log-off", "bare"):
                    if which == "bare":
                        server = start_bare(procs, ROOT, tmp, self.upstream.url)
                    else:
                        server = self._proxy(access_log=which == "log-on")
                    results.profiles.append(
                        profile(procs, wrk, server, tmp, self.warmup, self.seconds + 5)
                    )
                    _stop(procs, server)
            else:
                if section == "tokens":
                    server, path, method = self._proxy(tag="tokens"), TOKENS_PATH, "POST"
                else:
                    server = self._proxy(cache_backend="memory", tag="cache-memory")
                    path, method = "/documents", "GET"
                results.profiles.append(
                    profile(procs, wrk, server, tmp, self.warmup, self.seconds + 5, path, method)
                )
                _stop(procs, server)

    def _measure(self, server: Server, key: str) -> None:
        print(f"bench: {server.name}", flush=True)
        url = server.url + "/documents"
        results, wrk = self.results, self.wrk
        results.many[key] = wrk.measure(url, 32, self.warmup, self.seconds, server.pid)
        results.one[key] = wrk.measure(url, 1, self.warmup, self.seconds, server.pid)

    def flow1(self) -> None:
        """GET /documents: direct, bare forwarder, proxy with and without access log; memory."""
        results, procs, tmp, wrk = self.results, self.procs, self.tmp, self.wrk
        self._measure(self.upstream, "direct")
        bare = start_bare(procs, ROOT, tmp, self.upstream.url)
        self._measure(bare, "bare")
        _stop(procs, bare)

        proxy = self._proxy()
        time.sleep(0.5)
        results.rss_idle_kib = vm_rss_kib(proxy.pid)
        self._measure(proxy, "proxy_log_on")
        url = proxy.url + "/documents"
        while not self.args.quick and wrk.sent[url] < TARGET_RSS_REQUESTS:
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

        proxy_off = self._proxy(access_log=False)
        self._measure(proxy_off, "proxy_log_off")
        _stop(procs, proxy_off)

    def _logins(self) -> int:
        return int(get_json(self.aio.url + "/_bench/logins")["calls"])

    def tokens(self) -> None:
        """Token vending: wrk on one user's token (cache hits), then the fetch-count runs."""
        results = self.results
        proxy = self._proxy(tag="tokens")
        print(f"bench: {proxy.name}: token vending, one user (cache hits)", flush=True)
        before = self._logins()
        results.tokens_wrk = self.wrk.measure(
            proxy.url + TOKENS_PATH, 32, self.warmup, self.seconds, proxy.pid, method="POST"
        )
        results.tokens_wrk_logins = self._logins() - before
        print(f"bench:   upstream /login calls: {results.tokens_wrk_logins}", flush=True)
        print("bench: token vending, upstream fetches for 100 users", flush=True)
        self.wrk.wait_quiet()
        results.vending = measure_vending(proxy, self.aio.url)
        _stop(self.procs, proxy)

    def cache(self) -> None:
        """GET /documents through the proxy without, then with, a response cache per backend."""
        results = self.results
        backends: list[tuple[str, str | None]] = [("none", None), ("memory", "memory")]
        if redis_answers(*REDIS):
            backends.append(("redis", REDIS_URL))
        else:
            results.notes.append(
                f"redis row skipped: no Redis answered PING on {REDIS[0]}:{REDIS[1]}"
            )
        backends.append(("sqlite", f"sqlite:///{self.tmp / 'cache.db'}"))
        redis_pid = find_process("redis-server")
        for key, backend in backends:
            if backend is not None:
                results.cache_backends[key] = backend
            proxy = self._proxy(cache_backend=backend, tag=f"cache-{key}")
            url = proxy.url + "/documents"
            print(f"bench: {proxy.name}", flush=True)
            if backend is not None:
                states = cache_states(url)
                print(f"bench:   X-Cache answers until a HIT: {', '.join(states)}", flush=True)
                if states[-1] != "HIT":
                    results.notes.append(f"{key}: the cache never answered HIT ({states})")
            lookups = self._lookups(proxy)
            helper = redis_pid if key == "redis" else None
            results.cache[key] = self.wrk.measure(
                url, 32, self.warmup, self.seconds, proxy.pid, helper_pid=helper
            )
            if backend is not None:
                after = self._lookups(proxy)
                results.cache_lookups[key] = {k: after[k] - lookups[k] for k in after}
            _stop(self.procs, proxy)
        if "redis" in results.cache and redis_pid is None:
            results.notes.append("redis-server is not visible here: its CPU is not counted")

    def tls(self, nginx: str | None) -> None:
        """GET /documents from nginx over HTTPS: direct, bare forwarder and proxy, counting the
        TLS connections nginx accepted per run (keep-alive should make them few)."""
        results, procs, wrk = self.results, self.procs, self.wrk
        if nginx is None:
            results.notes.append("tls section skipped: nginx could not be installed")
            return
        # The same two servers over plain HTTP first, measured in the same minutes: TLS's own
        # cost is the difference, whatever the machine's speed that day.
        for key in ("bare", "proxy_log_on"):
            if key == "bare":
                server = start_bare(procs, ROOT, self.tmp, self.upstream.url)
            else:
                server = self._proxy(tag="tls-plain")
            print(f"bench: {server.name} over plain HTTP (reference)", flush=True)
            url = server.url + "/documents"
            results.tls_plain[key] = wrk.measure(url, 32, self.warmup, self.seconds, server.pid)
            _stop(procs, server)
        upstream = start_nginx_tls(procs, nginx, self.tmp)
        base = upstream.server.url
        for key in ("direct", "bare", "proxy_log_on"):
            if key == "direct":
                server = upstream.server
            elif key == "bare":
                server = start_bare(procs, ROOT, self.tmp, base, upstream.ca_file)
            else:
                server = start_proxy(
                    procs,
                    ROOT,
                    self.tmp,
                    base,
                    access_log=True,
                    tag="tls",
                    ca_file=upstream.ca_file,
                )
            print(f"bench: {server.name} over TLS", flush=True)
            url = server.url + "/documents"
            for conns, group in ((32, results.tls_many), (1, results.tls_one)):
                sent, before = wrk.sent.get(url, 0), upstream.accepted()
                group[key] = wrk.measure(url, conns, self.warmup, self.seconds, server.pid)
                accepted = upstream.accepted_between(before, upstream.accepted())
                results.tls_handshakes[f"{key}/{conns}"] = (accepted, wrk.sent[url] - sent)
                print(f"bench:   TLS connections accepted by nginx: {accepted}", flush=True)
            if server is not upstream.server:
                _stop(procs, server)
        _stop(procs, upstream.server)

    def jwt(self) -> None:
        """GET /documents through the proxy in basic mode, then in jwt mode, twice each
        (alternating, so a burst of other load does not land on one mode only)."""
        results = self.results
        key = write_key(self.tmp)
        for round_ in range(2):
            for mode in ("basic", "jwt"):
                proxy = start_proxy(
                    self.procs,
                    ROOT,
                    self.tmp,
                    self.upstream.url,
                    access_log=True,
                    tag=f"{mode}-{round_}",
                    jwt_key=key if mode == "jwt" else None,
                )
                print(f"bench: {proxy.name}, round {round_ + 1}", flush=True)
                url = proxy.url + "/documents"
                run = self.wrk.measure(url, 32, self.warmup, self.seconds, proxy.pid)
                best = results.jwt.get(mode)
                if best is None or run.rps > best.rps:
                    results.jwt[mode] = run  # the better of two: the less disturbed run
                _stop(self.procs, proxy)
        results.jwt_sign_us = sign_cost_us(key)
        print(
            f"bench:   one ES256 signature (cache miss): {results.jwt_sign_us:.0f} us", flush=True
        )

    @staticmethod
    def _lookups(proxy: Server) -> dict[str, int]:
        name = "gini_proxy_response_cache_total"
        return {
            result: int(counter(proxy.admin_url, name, route="/documents", result=result))
            for result in ("hit", "miss", "error")
        }


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
