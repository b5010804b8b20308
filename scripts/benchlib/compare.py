"""Noise-resistant comparison: short wrk runs of each contender, alternated over several rounds.

On a shared 2-core machine the speed available to the bench drifts by tens of per cent from one
minute to the next, so two servers measured one after the other for 10 s each can come out
20 % apart for no reason of their own. Here every contender runs for a few seconds per round,
the order rotating each round so that none always follows the same neighbour, and each side is
summarised by the mean of its best `keep` runs (highest req/s; lowest p50 for latency): a burst
of other load lowers some runs of every side, and the best runs are the ones it spared.

A side can also be several identical processes (contenders sharing a key), taking turns from
round to round. On a VM whose neighbours share its physical cores, identical processes of the
same server differed by up to 20 % in one run, for the whole run (three proxy twins: 2,271,
2,516 and 2,779 req/s): where a process's memory and cores land is luck that lasts as long as
the process. With several processes, each contributes its own best runs (`keep` split among
them, at least one each), so one lucky or unlucky process no longer decides the ratio.

All contenders are started before the first round and stay up (idle when not measured), so
their connection pools are warm. The server CPU per request (from /proc) is reported per side
as well: unlike req/s it hardly depends on how much CPU was left to the bench, so it shows a
slow baseline or a noisy round for what it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import mean

from .wrk import QUIET, Wrk, WrkResult


@dataclass(frozen=True)
class Contender:
    key: str  # "proxy", "lean", "bare", ...
    label: str
    url: str  # the full URL wrk loads
    pid: int  # the server process, for its CPU time
    method: str = "GET"


@dataclass
class Side:
    key: str
    label: str
    keep: int
    runs: list[WrkResult] = field(default_factory=list)
    process_of_run: list[int] = field(default_factory=list)  # which of the side's processes
    # new upstream connections (TLS handshakes) counted during the measured runs, if counted
    upstream_connections: int | None = None

    def _best(self, score: Callable[[WrkResult], float]) -> list[WrkResult]:
        """The best runs by `score` (lower is better): `keep` in all, split evenly among the
        side's processes, at least one from each. Runs measured while other processes used
        the machine are left out when a process has enough quiet ones: on this project's VMs
        such runs were sometimes faster than every quiet one (a busy CPU stays out of its
        deep idle states), and a best run must not owe its rank to a neighbour."""
        processes = sorted(set(self.process_of_run))
        each = max(1, self.keep // len(processes)) if processes else 0
        best: list[WrkResult] = []
        for process in processes:
            own = [r for r, p in zip(self.runs, self.process_of_run, strict=True) if p == process]
            quiet = [r for r in own if r.other_cores <= QUIET]
            best += sorted(quiet if len(quiet) >= each else own, key=score)[:each]
        return best

    def _fastest(self) -> list[WrkResult]:
        return self._best(lambda r: -r.rps)

    @property
    def rps(self) -> float:
        """Mean req/s of the best runs."""
        best = self._fastest()
        return mean(r.rps for r in best) if best else 0.0

    @property
    def p50_ms(self) -> float:
        """Mean p50 of the runs with the lowest p50 (picked as the best runs are)."""
        best = self._best(lambda r: r.p50_ms)
        return mean(r.p50_ms for r in best) if best else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        """Server CPU per request over the best runs (by req/s)."""
        best = self._fastest()
        requests = sum(r.requests for r in best)
        return sum(r.server_cpu_s for r in best) / requests * 1e6 if requests else 0.0

    @property
    def requests(self) -> int:
        return sum(r.requests for r in self.runs)

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.runs)

    @property
    def rps_range(self) -> tuple[float, float]:
        rates = [r.rps for r in self.runs] or [0.0]
        return min(rates), max(rates)

    @property
    def max_other_cores(self) -> float:
        return max((r.other_cores for r in self.runs), default=0.0)

    @property
    def contended_runs(self) -> int:
        return sum(1 for r in self.runs if r.other_cores > QUIET)

    def summary(self) -> dict[str, object]:
        low, high = self.rps_range
        return {
            "rps_best_mean": self.rps,
            "p50_ms_best_mean": self.p50_ms,
            "cpu_us_per_request": self.cpu_us_per_request,
            "rps_min": low,
            "rps_max": high,
            "requests": self.requests,
            "errors": self.errors,
            "contended_runs": self.contended_runs,
            "max_other_cores": self.max_other_cores,
        }


@dataclass
class Comparison:
    connections: int
    rounds: int
    seconds: int
    keep: int
    sides: dict[str, Side] = field(default_factory=dict)
    processes: int = 1  # per side

    def rps_ratio(self, key: str, base: str) -> float | None:
        a, b = self.sides.get(key), self.sides.get(base)
        if a is None or b is None or not b.rps:
            return None
        return a.rps / b.rps

    def p50_diff_ms(self, key: str, base: str) -> float | None:
        a, b = self.sides.get(key), self.sides.get(base)
        if a is None or b is None:
            return None
        return a.p50_ms - b.p50_ms

    def method(self) -> str:
        rounds = f"{self.rounds} rounds x {self.seconds} s per contender, order rotating; "
        if self.processes == 1:
            return rounds + f"mean of each side's best {self.keep}"
        each = max(1, self.keep // self.processes)
        return rounds + (
            f"{self.processes} processes per contender taking turns; mean of the best "
            f"{each} run{'s' if each > 1 else ''} of each process"
        )


def alternate(
    wrk: Wrk,
    contenders: list[Contender],
    connections: int,
    *,
    rounds: int,
    seconds: int,
    warmup: int,
    keep: int,
    connections_counter: Callable[[], int] | None = None,
) -> Comparison:
    """Warm each contender up once, then `rounds` rounds of one `seconds` run per side.

    Contenders with the same key are processes of one side: round r measures the side's
    (r mod n)-th process. `connections_counter`, when given, reads a counter of connections
    the upstream accepted (each read counting itself once); its growth during each measured
    run is charged to the contender that ran.
    """
    processes: dict[str, list[Contender]] = {}
    for c in contenders:
        processes.setdefault(c.key, []).append(c)
    counts = {len(group) for group in processes.values()}
    if len(counts) != 1:
        raise ValueError("every side needs the same number of processes")
    comparison = Comparison(connections, rounds, seconds, min(keep, rounds), processes=counts.pop())
    for key, group in processes.items():
        side = Side(key, group[0].label, comparison.keep)
        if connections_counter is not None:
            side.upstream_connections = 0
        comparison.sides[key] = side
    keys = list(processes)
    names = ", ".join(group[0].label for group in processes.values())
    each = f", {comparison.processes} processes each" if comparison.processes > 1 else ""
    print(f"bench: alternating at {connections} conn: {names}{each}", flush=True)
    wrk.wait_quiet()
    for c in contenders:
        wrk.run(c.url, connections, warmup, method=c.method)
    for round_ in range(rounds):
        shift = round_ % len(keys)
        process = round_ % comparison.processes
        for key in keys[shift:] + keys[:shift]:
            c = processes[key][process]
            before = connections_counter() if connections_counter else 0
            r = wrk.run(c.url, connections, seconds, c.pid, c.method)
            side = comparison.sides[c.key]
            side.runs.append(r)
            side.process_of_run.append(process)
            if connections_counter is not None and side.upstream_connections is not None:
                side.upstream_connections += connections_counter() - before - 1
            flag = "  CONTENDED" if r.other_cores > QUIET else ""
            which = f" #{process + 1}" if comparison.processes > 1 else ""
            print(
                f"bench:   round {round_ + 1}/{rounds} {c.label + which:<27} {r.rps:7.0f} req/s  "
                f"p50 {r.p50_ms:.3f} ms  CPU {r.cpu_us_per_request:4.0f} us/req  "
                f"errors {r.errors}  other load {r.other_cores:.2f}{flag}",
                flush=True,
            )
    for side in comparison.sides.values():
        low, high = side.rps_range
        print(
            f"bench:   {side.label:<24} best-runs mean {side.rps:7.0f} req/s "
            f"(runs {low:.0f}-{high:.0f})  p50 {side.p50_ms:.3f} ms  "
            f"CPU {side.cpu_us_per_request:.0f} us/req",
            flush=True,
        )
    return comparison
