"""The shed section: what an answer shed by upstream protection costs, against a 400.

One proxy (default configuration but for a 600 s pause cap; protection on) forwards
`GET /documents` to the throttling upstream (`throttle.py`). Once that upstream is switched to 429
with `Retry-After: 600`, one request through the proxy hears the 429 and the proxy pauses its
Pay API calls; from then on it answers `429 upstream_throttled` without calling Gini. The same
proxy answers a caller whose `X-User-Id` is too long with `400 invalid_user`, the cheapest
refusal it has. A second proxy, the same but for its upstream, stands in front of a second such
upstream switched to `503` without `Retry-After`: its breaker opens after `min_calls` failures
and it answers `503 upstream_unavailable` itself, with one probe every `open_seconds`. wrk
loads the three in alternating runs (each run a fresh wrk, the order rotating), and each proxy
process's CPU time per answer (`cpu.py`, from /proc) is compared: CPU per request hardly
depends on how much CPU was left to the bench, unlike req/s.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .compare import Side
from .probe import counter, get_json
from .procs import Processes
from .servers import Server, start_helper
from .throttle import RETRY_AFTER
from .wrk import LUA, QUIET, Wrk, WrkResult

if TYPE_CHECKING:
    from .sections import Bench

BAD_USER_ID = "b" * 300  # over the 256-byte limit: refused before anything else is done
BREAKER_CALLS = 40  # failed calls through the second proxy: past the default min_calls (20)
SHED = "gini_proxy_upstream_shed_total"
ANSWERS = "gini_proxy_requests_total"


@dataclass
class ShedResult:
    shed: Side  # 429 upstream_throttled during a pause
    refused: Side  # 400 invalid_user
    breaker: Side  # 503 upstream_unavailable from an open breaker (the second proxy)
    shed_counted: int = 0  # the proxy's shed counter (reason paused) over the runs, warm-ups too
    upstream_calls: int = 0  # calls that reached the throttling upstream over the same time
    breaker_counted: int = 0  # the second proxy's shed counter (reason breaker)
    breaker_upstream_calls: int = 0  # its probes that reached the failing upstream
    probes: dict[str, str] = field(default_factory=dict)  # what one request of each kind got

    @staticmethod
    def _cpu(side: Side) -> float:
        """CPU us per answer over the side's quiet runs (all runs if none was quiet)."""
        runs = [r for r in side.runs if r.other_cores <= QUIET] or side.runs
        requests = sum(r.requests for r in runs)
        return sum(r.server_cpu_s for r in runs) / requests * 1e6 if requests else 0.0

    @property
    def shed_cpu_us(self) -> float:
        return self._cpu(self.shed)

    @property
    def refused_cpu_us(self) -> float:
        return self._cpu(self.refused)

    @property
    def breaker_cpu_us(self) -> float:
        return self._cpu(self.breaker)

    @property
    def ratio(self) -> float | None:
        return self.shed_cpu_us / self.refused_cpu_us if self.refused_cpu_us else None

    @property
    def breaker_ratio(self) -> float | None:
        if not self.refused_cpu_us or not self.breaker.runs:
            return None
        return self.breaker_cpu_us / self.refused_cpu_us


def start_throttling_upstream(procs: Processes, root: Path, tmp: Path, name: str) -> Server:
    return start_helper(procs, root, tmp, "upstream (throttling)", "throttle", "/documents", name)


def _answer(url: str, user_id: str) -> tuple[int, str]:
    """(status, contract error code or "-") of one GET as `user_id`."""
    request = urllib.request.Request(url, headers={"X-User-Id": user_id})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback
            return answer.status, "-"
    except urllib.error.HTTPError as exc:
        try:
            code = str(json.loads(exc.read()).get("error", "?"))
        except ValueError:
            code = "not JSON"
        return exc.code, code


def bad_id_wrk(wrk: Wrk, tmp: Path) -> Wrk:
    """A second wrk like `wrk` whose GET script sends the too-long user id."""
    folder = tmp / "wrk-bad-id"
    folder.mkdir(exist_ok=True)
    bad = Wrk(wrk.path, folder, wrk.procs, max_wait=wrk.max_wait, retries=wrk.retries)
    script = folder / "bench-get-bad-id.lua"
    script.write_text('wrk.method = "GET"\n' + LUA.replace('"bench-user"', f'"{BAD_USER_ID}"'))
    bad.scripts["GET"] = script
    return bad


def _switch(upstream: Server, status: int) -> None:
    query = "?status=503" if status == 503 else ""
    url = upstream.url + "/_bench/throttle" + query
    switch = urllib.request.Request(url, method="POST")  # noqa: S310
    with urllib.request.urlopen(switch, timeout=5) as answer:  # noqa: S310 - loopback
        answer.read()


def measure_shed(
    wrk: Wrk,
    tmp: Path,
    proxies: tuple[Server, Server],
    upstreams: tuple[Server, Server],
    *,
    rounds: int,
    seconds: int,
    warmup: int,
) -> ShedResult:
    """Pause the first proxy's Pay API calls and open the second one's breaker, then alternate
    wrk runs of shed, breaker and refused answers."""
    (proxy, failing), (throttler, broken) = proxies, upstreams
    url, failing_url = proxy.url + "/documents", failing.url + "/documents"
    wrk.wait_quiet()  # before the pause starts: waiting may take longer than the pause
    _switch(throttler, 429)
    _switch(broken, 503)
    result = ShedResult(
        Side("shed", "shed (429 upstream_throttled)", rounds),
        Side("refused", "refused (400 invalid_user)", rounds),
        Side("breaker", "breaker (503, second proxy)", rounds),
    )
    first = _answer(url, "bench-user")  # Gini's 429: the pause starts here
    result.probes = {
        "first call (Gini's 429)": f"{first[0]} {first[1]}",
        "during the pause": " ".join(map(str, _answer(url, "bench-user"))),
        "too-long user id": " ".join(map(str, _answer(url, BAD_USER_ID))),
    }
    opened = [_answer(failing_url, "bench-user") for _ in range(BREAKER_CALLS)]
    result.probes["second proxy, failing Gini"] = " ".join(map(str, opened[0]))
    result.probes["second proxy, breaker open"] = " ".join(map(str, opened[-1]))
    for what, got in result.probes.items():
        print(f"bench:   {what}: {got}", flush=True)
    calls0 = int(get_json(throttler.url + "/_bench/calls")["calls"])
    broken0 = int(get_json(broken.url + "/_bench/calls")["calls"])
    shed0 = counter(proxy.admin_url, SHED, upstream="pay_api", reason="paused")
    open0 = counter(failing.admin_url, SHED, upstream="pay_api", reason="breaker")
    bad = bad_id_wrk(wrk, tmp)
    sides = {
        "shed": (wrk, result.shed, proxy),
        "refused": (bad, result.refused, proxy),
        "breaker": (wrk, result.breaker, failing),
    }
    for runner, _, server in sides.values():
        runner.run(server.url + "/documents", 32, warmup)
    keys = list(sides)
    for round_ in range(rounds):
        shift = round_ % len(keys)
        for key in keys[shift:] + keys[:shift]:
            runner, side, server = sides[key]
            r: WrkResult = runner.run(server.url + "/documents", 32, seconds, server.pid)
            side.runs.append(r)
            side.process_of_run.append(0)
            flag = "  CONTENDED" if r.other_cores > QUIET else ""
            print(
                f"bench:   round {round_ + 1}/{rounds} {side.label:<30} {r.rps:7.0f} req/s  "
                f"CPU {r.cpu_us_per_request:4.0f} us/answer  other load {r.other_cores:.2f}{flag}",
                flush=True,
            )
    result.shed_counted = int(
        counter(proxy.admin_url, SHED, upstream="pay_api", reason="paused") - shed0
    )
    result.upstream_calls = int(get_json(throttler.url + "/_bench/calls")["calls"]) - calls0
    result.breaker_counted = int(
        counter(failing.admin_url, SHED, upstream="pay_api", reason="breaker") - open0
    )
    result.breaker_upstream_calls = int(get_json(broken.url + "/_bench/calls")["calls"]) - broken0
    print(
        f"bench:   CPU per answer: shed {result.shed_cpu_us:.0f} us, breaker "
        f"{result.breaker_cpu_us:.0f} us, 400 {result.refused_cpu_us:.0f} us; "
        f"{result.shed_counted:,} shed during the pause ({result.upstream_calls} reached the "
        f"upstream), {result.breaker_counted:,} by the breaker ({result.breaker_upstream_calls} "
        "probes)",
        flush=True,
    )
    return result


def table(result: ShedResult) -> list[str]:
    lines = [
        "",
        "### shed: answers shed during a pause (429) and by an open breaker (503) against a 400",
        "",
        "| answer                          | req/s, all runs | server CPU us/answer "
        "| contended runs |",
        "|---------------------------------|----------------:|---------------------:"
        "|---------------:|",
    ]
    sides = (
        (result.shed, result.shed_cpu_us),
        (result.breaker, result.breaker_cpu_us),
        (result.refused, result.refused_cpu_us),
    )
    for side, cpu in sides:
        low, high = side.rps_range
        lines.append(
            f"| {side.label:<31} | {f'{low:.0f} - {high:.0f}':>15} | {cpu:>20.1f} "
            f"| {f'{side.contended_runs} of {len(side.runs)}':>14} |"
        )
    lines.append(
        f"shed by the proxy (reason paused): {result.shed_counted:,}; calls that reached the "
        f"throttling upstream meanwhile: {result.upstream_calls}; shed by the second proxy's "
        f"breaker: {result.breaker_counted:,}, with {result.breaker_upstream_calls} probes"
    )
    lines += [f"{what}: {got}" for what, got in result.probes.items()]
    return lines


def section(bench: Bench) -> None:
    """`--only shed`: a proxy at its defaults in front of the throttling upstream."""
    from .sections import ROOT, stop  # noqa: PLC0415 - sections imports the report, which imports this

    throttler = start_throttling_upstream(bench.procs, ROOT, bench.tmp, "throttling")
    broken = start_throttling_upstream(bench.procs, ROOT, bench.tmp, "failing")
    # One pause for the whole run (a full run alternates three sides for about 90 s): a pause
    # running out lets up to max_in_flight calls through before the next 429 is heard.
    pause = f"  protection:\n    max_pause_seconds: {RETRY_AFTER}\n"
    proxy = bench._proxy(tag="shed", upstream=throttler.url, in_upstream=pause)
    failing = bench._proxy(tag="breaker", upstream=broken.url)
    t = bench.timing
    bench.results.shed = measure_shed(
        bench.wrk,
        bench.tmp,
        (proxy, failing),
        (throttler, broken),
        rounds=t.rounds,
        seconds=t.round_seconds,
        warmup=t.warmup,
    )
    for server in (proxy, failing, throttler, broken):
        stop(bench.procs, server)
