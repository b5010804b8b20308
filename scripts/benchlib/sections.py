"""The sections of a bench run (flow1, tokens, cache, tls, jwt) and `--profile`.

The ratio targets come from alternating comparisons (compare.py): the proxy and its baselines
all run at once and take turns under wrk within the same minutes. Single measurements (direct
to the upstream, the response cache backends, jwt mode) are information or have targets of
their own.
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import footprint
from .compare import Comparison, Contender, alternate
from .cpu import find_process
from .jwt_mode import sign_cost_us, write_key
from .probe import cache_states, counter, get_json, redis_answers
from .procs import Processes, vm_rss_kib
from .profile import profile
from .report import Results
from .servers import Server, start_bare, start_lean, start_proxy
from .tls import start_nginx_tls
from .transfer import MIB, measure_transfers
from .vending import PATH as TOKENS_PATH
from .vending import measure_vending
from .verdict import TARGET_RSS_REQUESTS
from .wrk import Wrk, WrkResult

ROOT = Path(__file__).resolve().parents[2]
REDIS = ("127.0.0.1", 6379)
REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Timing:
    warmup: int  # s, discarded run before a single measurement or a comparison
    seconds: int  # s, a single measurement
    rounds: int  # alternating comparisons: rounds, seconds per run, best runs kept
    round_seconds: int
    keep: int
    processes: int  # alternating comparisons between servers: processes per side


def stop(procs: Processes, server: Server) -> None:
    procs.stop(server.proc, timeout=15)
    code = server.proc.returncode
    if code not in (0, -signal.SIGTERM):
        print(f"bench: warning: {server.name} exited with code {code}", flush=True)


def _log_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def _documents(key: str, label: str, servers: list[Server]) -> list[Contender]:
    """GET /documents contenders of one side: one per process."""
    return [Contender(key, label, server.url + "/documents", server.pid) for server in servers]


class Bench:
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
        timing: Timing,
    ):
        self.args = args
        self.procs = procs
        self.tmp = tmp
        self.wrk = wrk
        self.results = results
        self.aio = aio  # /login, /upload, /download
        self.upstream = upstream  # what the servers under test forward to (nginx or aio)
        self.timing = timing

    def _proxy(
        self,
        *,
        access_log: bool = True,
        cache_backend: str | None = None,
        tag: str | None = None,
        upstream: str | None = None,
        ca_file: Path | None = None,
        extra: str = "",
        in_upstream: str = "",
    ) -> Server:
        return start_proxy(
            self.procs,
            ROOT,
            self.tmp,
            upstream or self.upstream.url,
            access_log=access_log,
            cache_backend=cache_backend,
            tag=tag,
            ca_file=ca_file,
            extra=extra,
            in_upstream=in_upstream,
        )

    def _several(self, start: Callable[[], Server]) -> list[Server]:
        """`timing.processes` processes of one server, for an alternating comparison."""
        return [start() for _ in range(self.timing.processes)]

    def _alternate(
        self,
        contenders: list[Contender],
        connections: int,
        connections_counter: Callable[[], int] | None = None,
    ) -> Comparison:
        t = self.timing
        return alternate(
            self.wrk,
            contenders,
            connections,
            rounds=t.rounds,
            seconds=t.round_seconds,
            warmup=t.warmup,
            keep=t.keep,
            connections_counter=connections_counter,
        )

    def _single(self, server: Server, conns: int) -> WrkResult:
        """One warm-up and one measured run of GET /documents (repeated if contended)."""
        t = self.timing
        url = server.url + "/documents"
        return self.wrk.measure(url, conns, t.warmup, t.seconds, server.pid)

    def profiles(self, sections: tuple[str, ...]) -> None:
        results, procs, tmp, wrk, t = self.results, self.procs, self.tmp, self.wrk, self.timing
        for section in sections:
            if section == "flow1":
                for which in ("log-on", "log-off", "lean", "bare"):
                    if which == "bare":
                        server = start_bare(procs, ROOT, tmp, self.upstream.url)
                    elif which == "lean":
                        server = start_lean(procs, ROOT, tmp, self.upstream.url)
                    else:
                        server = self._proxy(access_log=which == "log-on")
                    results.profiles.append(
                        profile(procs, wrk, server, tmp, t.warmup, t.seconds + 5)
                    )
                    stop(procs, server)
            else:
                if section == "tokens":
                    server, path, method = self._proxy(tag="tokens"), TOKENS_PATH, "POST"
                else:
                    server = self._proxy(cache_backend="memory", tag="cache-memory")
                    path, method = "/documents", "GET"
                results.profiles.append(
                    profile(procs, wrk, server, tmp, t.warmup, t.seconds + 5, path, method)
                )
                stop(procs, server)

    def flow1(self) -> None:
        """GET /documents: direct (information), then the proxy (access log on and off) and the
        lean and bare forwarders alternating at 32 and at 1 connection; the proxy's memory, and
        what 10k cached tokens, identities and signed JWTs take."""
        results, procs, tmp, wrk = self.results, self.procs, self.tmp, self.wrk
        print(f"bench: {self.upstream.name}, direct", flush=True)
        results.many["direct"] = self._single(self.upstream, 32)
        results.one["direct"] = self._single(self.upstream, 1)

        proxies = self._several(self._proxy)
        proxy = proxies[0]  # the one whose memory is measured afterwards
        time.sleep(0.5)
        results.rss_idle_kib = vm_rss_kib(proxy.pid)
        leans = self._several(lambda: start_lean(procs, ROOT, tmp, self.upstream.url))
        bares = self._several(lambda: start_bare(procs, ROOT, tmp, self.upstream.url))
        proxies_off = self._several(lambda: self._proxy(access_log=False))
        main = [
            *_documents("proxy", "proxy (every feature on)", proxies),
            *_documents("lean", "lean forwarder", leans),
            *_documents("bare", "bare forwarder", bares),
        ]
        off = _documents("proxy_log_off", "proxy, access log off", proxies_off)
        results.compare["plain/32"] = self._alternate([*main, *off], 32)
        results.compare["plain/1"] = self._alternate(main, 1)
        for server in [*proxies_off, *bares, *leans, *proxies[1:]]:
            stop(procs, server)

        url = proxy.url + "/documents"
        while not self.args.quick and wrk.sent[url] < TARGET_RSS_REQUESTS:
            extra = wrk.run(url, 32, 5)
            print(f"bench:   +{extra.requests} requests to pass 100k", flush=True)
        results.proxy_requests = wrk.sent[url]
        results.rss_after_kib = vm_rss_kib(proxy.pid)
        print(
            f"bench:   proxy VmRSS after {results.proxy_requests:,} requests: "
            f"{results.rss_after_kib / 1024:.1f} MiB",
            flush=True,
        )
        results.transfers = measure_transfers(proxy.url, proxy.pid, 30 * MIB, 40 * MIB)
        results.footprint = footprint.measure(write_key(tmp))
        stop(procs, proxy)
        lines = _log_lines(tmp / "proxy-log-on.stdout")
        print(f"bench:   access log: {lines:,} lines written", flush=True)

    def _logins(self) -> int:
        return int(get_json(self.aio.url + "/_bench/logins")["calls"])

    def tokens(self) -> None:
        """Token vending from the cache against flow 1, alternating on the same proxy; then
        the fetch-count runs."""
        results = self.results
        proxy = self._proxy(tag="tokens")
        before = self._logins()
        contenders = [
            *_documents("documents", "flow 1, GET /documents", [proxy]),
            Contender(
                "tokens", "token vending, one user", proxy.url + TOKENS_PATH, proxy.pid, "POST"
            ),
        ]
        results.compare["tokens/32"] = self._alternate(contenders, 32)
        results.tokens_wrk_logins = self._logins() - before
        print(f"bench:   upstream /login calls: {results.tokens_wrk_logins}", flush=True)
        print("bench: token vending, upstream fetches for 100 users", flush=True)
        self.wrk.wait_quiet()
        results.vending = measure_vending(proxy, self.aio.url)
        stop(self.procs, proxy)

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
        t = self.timing
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
                url, 32, t.warmup, t.seconds, proxy.pid, helper_pid=helper
            )
            if backend is not None:
                after = self._lookups(proxy)
                results.cache_lookups[key] = {k: after[k] - lookups[k] for k in after}
            stop(self.procs, proxy)
        if "redis" in results.cache and redis_pid is None:
            results.notes.append("redis-server is not visible here: its CPU is not counted")

    def tls(self, nginx: str | None) -> None:
        """GET /documents from nginx over HTTPS: direct (information), then the proxy and the
        lean and bare forwarders alternating, counting the TLS connections nginx accepted
        (keep-alive should make them few)."""
        results, procs, wrk = self.results, self.procs, self.wrk
        if nginx is None:
            results.notes.append("tls section skipped: nginx could not be installed")
            return
        upstream = start_nginx_tls(procs, nginx, self.tmp)
        base, ca_file = upstream.server.url, upstream.ca_file
        direct = upstream.server
        print(f"bench: {direct.name}, direct", flush=True)
        url = direct.url + "/documents"
        for conns, group in ((32, results.tls_many), (1, results.tls_one)):
            sent, before = wrk.sent.get(url, 0), upstream.accepted()
            group["direct"] = self._single(direct, conns)
            accepted = upstream.accepted_between(before, upstream.accepted())
            results.tls_handshakes[f"direct/{conns}"] = (accepted, wrk.sent[url] - sent)
        proxies = self._several(lambda: self._proxy(tag="tls", upstream=base, ca_file=ca_file))
        leans = self._several(lambda: start_lean(procs, ROOT, self.tmp, base, ca_file))
        bares = self._several(lambda: start_bare(procs, ROOT, self.tmp, base, ca_file))
        contenders = [
            *_documents("proxy", "proxy (every feature on)", proxies),
            *_documents("lean", "lean forwarder", leans),
            *_documents("bare", "bare forwarder", bares),
        ]
        for conns in (32, 1):
            results.compare[f"tls/{conns}"] = self._alternate(
                contenders, conns, connections_counter=upstream.accepted
            )
        for server in [*bares, *leans, *proxies, direct]:
            stop(procs, server)

    def jwt(self) -> None:
        """GET /documents through the proxy in basic mode and in jwt mode, alternating like
        the other ratio targets; then what one signature costs when a user's JWT is not
        cached."""
        results = self.results
        key = write_key(self.tmp)

        def start(mode: str) -> Server:
            return start_proxy(
                self.procs,
                ROOT,
                self.tmp,
                self.upstream.url,
                access_log=True,
                tag=mode,
                jwt_key=key if mode == "jwt" else None,
            )

        basic = self._several(lambda: start("basic"))
        signing = self._several(lambda: start("jwt"))
        contenders = [
            *_documents("basic", "client.auth basic", basic),
            *_documents("jwt", "client.auth jwt", signing),
        ]
        results.compare["jwt/32"] = self._alternate(contenders, 32)
        for proxy in [*basic, *signing]:
            stop(self.procs, proxy)
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
