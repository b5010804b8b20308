"""Running wrk with a Lua script that sets the caller header and reports results as JSON."""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .cpu import CpuMeter
from .procs import Processes

QUIET = 0.15  # cores: more CPU than this used by other processes makes a run "contended"

LUA = r"""
wrk.headers["X-User-Id"] = "bench-user"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH-RESULT {\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\"connect\":%d," ..
    "\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d,\"p50_us\":%.0f," ..
    "\"p90_us\":%.0f,\"p99_us\":%.0f,\"mean_us\":%.1f,\"max_us\":%.0f}\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    server_cpu_s: float  # CPU seconds the server under test used during the run
    other_cores: float  # CPU used meanwhile by processes the bench did not start
    steal_cores: float  # CPU the hypervisor gave to other guests meanwhile
    helper_cpu_s: float = 0.0  # CPU seconds of a helper outside the bench (Redis), if any

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_request(self) -> float:
        return self.server_cpu_s / self.requests * 1e6 if self.requests else 0.0

    @property
    def helper_us_per_request(self) -> float:
        return self.helper_cpu_s / self.requests * 1e6 if self.requests else 0.0


class Wrk:
    """One wrk binary and its Lua script; `-t1` always (see docs/performance.md)."""

    def __init__(
        self, path: str, workdir: Path, procs: Processes, max_wait: float = 0, retries: int = 0
    ):
        self.path = path
        self.workdir = workdir
        self.scripts: dict[str, Path] = {}  # per HTTP method
        self.procs = procs
        self.max_wait = max_wait  # seconds to wait for a quiet machine before each measurement
        self.retries = retries  # extra attempts when a measurement was contended anyway
        self.sent: dict[str, int] = {}  # requests answered per URL, warm-ups included

    def _script(self, method: str) -> Path:
        script = self.scripts.get(method)
        if script is None:
            script = self.workdir / f"bench-{method.lower()}.lua"
            script.write_text(f'wrk.method = "{method}"\n' + LUA)
            self.scripts[method] = script
        return script

    def run(
        self,
        url: str,
        connections: int,
        seconds: int,
        server_pid: int | None = None,
        method: str = "GET",
        helper_pid: int | None = None,
    ) -> WrkResult:
        argv = [
            self.path,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(self._script(method)),
            url,
        ]
        with CpuMeter(server_pid, helper_pid) as meter:
            proc = self.procs.start("wrk", argv, stdout=subprocess.PIPE, quiet=True)
            try:
                out, _ = proc.communicate(timeout=seconds + 60)
            finally:
                self.procs.stop(proc)
        text = out.decode(errors="replace")
        for line in text.splitlines():
            if line.startswith("BENCH-RESULT "):
                data = json.loads(line.removeprefix("BENCH-RESULT "))
                errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
                self.sent[url] = self.sent.get(url, 0) + int(data["requests"])
                return WrkResult(
                    requests=int(data["requests"]),
                    seconds=data["duration_us"] / 1e6,
                    errors=int(errors),
                    p50_ms=data["p50_us"] / 1000,
                    p90_ms=data["p90_us"] / 1000,
                    p99_ms=data["p99_us"] / 1000,
                    server_cpu_s=meter.server_seconds,
                    other_cores=meter.use.other,
                    steal_cores=meter.use.steal,
                    helper_cpu_s=meter.helper_seconds,
                )
        raise RuntimeError(f"wrk printed no result (exit {proc.returncode}):\n{text}")

    def wait_quiet(self) -> None:
        """Wait (up to `max_wait` s) until processes the bench did not start idle."""
        deadline = time.monotonic() + self.max_wait
        told = False
        while True:
            with CpuMeter() as meter:
                time.sleep(1.0)
            if meter.use.other <= QUIET or time.monotonic() > deadline:
                return
            if not told:
                print(
                    f"bench:   other processes use {meter.use.other:.2f} cores; waiting up to "
                    f"{self.max_wait:.0f} s for the machine to go quiet",
                    flush=True,
                )
                told = True

    def measure(
        self,
        url: str,
        connections: int,
        warmup: int,
        seconds: int,
        server_pid: int,
        method: str = "GET",
        helper_pid: int | None = None,
    ) -> WrkResult:
        """A discarded warm-up run, then the measured one; repeated if the machine was busy."""
        best: WrkResult | None = None
        for attempt in range(1 + self.retries):
            self.wait_quiet()
            self.run(url, connections, warmup, method=method)
            r = self.run(url, connections, seconds, server_pid, method, helper_pid)
            self._print(r, connections)
            if best is None or r.other_cores < best.other_cores:
                best = r
            if r.other_cores <= QUIET:
                break
            if attempt < self.retries:
                print("bench:   contended: measuring again", flush=True)
        assert best is not None
        return best

    def _print(self, r: WrkResult, connections: int) -> None:
        print(
            f"bench:   {connections:>2} conn {r.rps:7.0f} req/s  p50 {r.p50_ms:.3f}  "
            f"p90 {r.p90_ms:.3f}  p99 {r.p99_ms:.3f} ms  errors {r.errors}  "
            f"server CPU {r.cpu_us_per_request:.0f} us/req  other load {r.other_cores:.2f} "
            f"cores  steal {r.steal_cores:.2f}"
            + (f"  helper CPU {r.helper_us_per_request:.0f} us/req" if r.helper_cpu_s else ""),
            flush=True,
        )
        if r.other_cores > QUIET:
            print(
                f"bench:   WARNING: other processes used {r.other_cores:.2f} cores during this "
                "run; its figures are not comparable",
                flush=True,
            )
