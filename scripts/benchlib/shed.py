"""The shed section: what an answer shed by upstream protection costs, against a 400.

One proxy (default configuration, so protection on) forwards `GET /documents` to the throttling
upstream (`throttle.py`). Once that upstream is switched to 429 with `Retry-After: 60`, one
request through the proxy hears the 429 and the proxy pauses its Pay API calls; from then on
it answers `429 upstream_throttled` without calling Gini. The same proxy answers a caller
whose `X-User-Id` is too long with `400 invalid_user`, the cheapest refusal it has. wrk loads
both in alternating runs (each run a fresh wrk, the order rotating), and the proxy process's
CPU time per answer (`cpu.py`, from /proc) is compared: CPU per request hardly depends on how
much CPU was left to the bench, unlike req/s.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .compare import Side
from .probe import counter, get_json
from .procs import Processes, child_env, free_port, wait_http
from .servers import Server
from .wrk import LUA, QUIET, Wrk, WrkResult

if TYPE_CHECKING:
    from .sections import Bench

BAD_USER_ID = "b" * 300  # over the 256-byte limit: refused before anything else is done
SHED = "gini_proxy_upstream_shed_total"
ANSWERS = "gini_proxy_requests_total"


@dataclass
class ShedResult:
    shed: Side  # 429 upstream_throttled during a pause
    refused: Side  # 400 invalid_user
    shed_counted: int = 0  # the proxy's shed counter (reason paused) over the runs, warm-ups too
    upstream_calls: int = 0  # calls that reached the throttling upstream over the same time
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
    def ratio(self) -> float | None:
        return self.shed_cpu_us / self.refused_cpu_us if self.refused_cpu_us else None


def start_throttling_upstream(procs: Processes, root: Path, tmp: Path) -> Server:
    port = free_port()
    proc = procs.start(
        "upstream (throttling)",
        [sys.executable, "-m", "benchlib.throttle", "--port", str(port)],
        env=child_env(root),
        stderr=(tmp / "throttle.stderr").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/documents", proc, "the throttling upstream")
    return Server("upstream (throttling)", proc, url)


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


def measure_shed(
    wrk: Wrk,
    tmp: Path,
    proxy: Server,
    throttler: Server,
    *,
    rounds: int,
    seconds: int,
    warmup: int,
) -> ShedResult:
    """Pause the proxy's Pay API calls, then alternate wrk runs of shed and refused answers."""
    url = proxy.url + "/documents"
    wrk.wait_quiet()  # before the pause starts: waiting may take longer than the pause
    switch = urllib.request.Request(throttler.url + "/_bench/throttle", method="POST")  # noqa: S310
    with urllib.request.urlopen(switch, timeout=5) as answer:  # noqa: S310 - loopback
        answer.read()
    result = ShedResult(
        Side("shed", "shed (429 upstream_throttled)", rounds),
        Side("refused", "refused (400 invalid_user)", rounds),
    )
    first = _answer(url, "bench-user")  # Gini's 429: the pause starts here
    result.probes = {
        "first call (Gini's 429)": f"{first[0]} {first[1]}",
        "during the pause": " ".join(map(str, _answer(url, "bench-user"))),
        "too-long user id": " ".join(map(str, _answer(url, BAD_USER_ID))),
    }
    for what, got in result.probes.items():
        print(f"bench:   {what}: {got}", flush=True)
    calls0 = int(get_json(throttler.url + "/_bench/calls")["calls"])
    shed0 = counter(proxy.admin_url, SHED, upstream="pay_api", reason="paused")
    bad = bad_id_wrk(wrk, tmp)
    sides = {"shed": (wrk, result.shed), "refused": (bad, result.refused)}
    for runner, _ in sides.values():
        runner.run(url, 32, warmup)
    keys = list(sides)
    for round_ in range(rounds):
        shift = round_ % len(keys)
        for key in keys[shift:] + keys[:shift]:
            runner, side = sides[key]
            r: WrkResult = runner.run(url, 32, seconds, proxy.pid)
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
    print(
        f"bench:   CPU per answer: shed {result.shed_cpu_us:.0f} us, 400 "
        f"{result.refused_cpu_us:.0f} us; {result.shed_counted:,} shed by the proxy, "
        f"{result.upstream_calls} reached the upstream",
        flush=True,
    )
    return result


def table(result: ShedResult) -> list[str]:
    lines = [
        "",
        "### shed: an answer shed during a pause (429) against a 400 for a bad user id",
        "",
        "| answer                          | req/s, all runs | server CPU us/answer "
        "| contended runs |",
        "|---------------------------------|----------------:|---------------------:"
        "|---------------:|",
    ]
    for side, cpu in ((result.shed, result.shed_cpu_us), (result.refused, result.refused_cpu_us)):
        low, high = side.rps_range
        lines.append(
            f"| {side.label:<31} | {f'{low:.0f} - {high:.0f}':>15} | {cpu:>20.1f} "
            f"| {f'{side.contended_runs} of {len(side.runs)}':>14} |"
        )
    lines.append(
        f"shed by the proxy (reason paused): {result.shed_counted:,}; calls that reached the "
        f"throttling upstream meanwhile: {result.upstream_calls}"
    )
    lines += [f"{what}: {got}" for what, got in result.probes.items()]
    return lines


def section(bench: Bench) -> None:
    """`--only shed`: a proxy at its defaults in front of the throttling upstream."""
    from .sections import ROOT, stop  # noqa: PLC0415 - sections imports the report, which imports this

    throttler = start_throttling_upstream(bench.procs, ROOT, bench.tmp)
    proxy = bench._proxy(tag="shed", upstream=throttler.url)
    t = bench.timing
    bench.results.shed = measure_shed(
        bench.wrk,
        bench.tmp,
        proxy,
        throttler,
        rounds=t.rounds,
        seconds=t.round_seconds,
        warmup=t.warmup,
    )
    stop(bench.procs, proxy)
    stop(bench.procs, throttler)
