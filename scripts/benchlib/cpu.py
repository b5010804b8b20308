"""CPU accounting during a measurement: the bench's own process tree versus everything else.

The bench shares a 2-core machine with whatever else runs there; a figure taken while another
process burns a core is not comparable. `CpuMeter` measures, over an interval, the CPU used by
the bench's process tree (wrk, upstreams, forwarders, the proxy), the CPU used by every other
process, and the time stolen by the hypervisor, all in cores (1.0 = one core busy throughout).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuUse:
    own: float  # cores used by the bench's process tree
    other: float  # cores used by everything else on the machine
    steal: float  # cores the hypervisor gave to other guests


def _machine() -> tuple[int, int]:
    """(ticks spent in processes, steal ticks) summed over all CPUs since boot.

    Interrupt and softirq time is left out: on loopback it is mostly the bench's own packets,
    and the kernel charges it to no process, so it cannot be told apart.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = fields[:8]
    return user + nice + system, steal


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # fields from `state` on; comm may hold spaces


def tree_ticks(me: int) -> int:
    """CPU ticks of process `me` (with its reaped children) and all its live descendants."""
    parents: dict[int, int] = {}
    used: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is None:
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        used[pid] = int(fields[11]) + int(fields[12])  # utime + stime
        if pid == me:
            used[pid] += int(fields[13]) + int(fields[14])  # + cutime + cstime (reaped)
    total = 0
    for pid, ticks in used.items():
        walk = pid
        while walk > 1 and walk != me:
            walk = parents.get(walk, 0)
        if walk == me:
            total += ticks
    return total


class CpuMeter:
    """`with CpuMeter(server_pid) as meter: ...` then `meter.use` and `meter.server_seconds`.

    `server_seconds` is the CPU time used by the server under test (and its children, for
    nginx's workers): divided by the requests served it gives a CPU cost per request that
    does not depend on how busy the rest of the machine was.

    `helper_pid` is a process the bench did not start but the server under test works with
    (the machine's Redis): its CPU time goes to `helper_seconds` instead of "other" load.
    """

    def __init__(self, server_pid: int | None = None, helper_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self.helper_pid = helper_pid
        self.use = CpuUse(0.0, 0.0, 0.0)
        self.server_seconds = 0.0
        self.helper_seconds = 0.0
        self._start = (0.0, 0, 0, 0, 0, 0)

    def _server(self) -> int:
        return tree_ticks(self.server_pid) if self.server_pid else 0

    def _helper(self) -> int:
        return process_ticks(self.helper_pid) if self.helper_pid else 0

    def __enter__(self) -> CpuMeter:
        busy, steal = _machine()
        own, server, helper = tree_ticks(os.getpid()), self._server(), self._helper()
        self._start = (time.monotonic(), busy, steal, own, server, helper)
        return self

    def __exit__(self, *_: object) -> None:
        busy, steal = _machine()
        own, server, helper = tree_ticks(os.getpid()), self._server(), self._helper()
        started, busy0, steal0, own0, server0, helper0 = self._start
        ticks = max(time.monotonic() - started, 1e-6) * _TICK
        own_cores = (own - own0) / ticks
        helper_cores = (helper - helper0) / ticks
        self.use = CpuUse(
            own=own_cores,
            other=max((busy - busy0) / ticks - own_cores - helper_cores, 0.0),
            steal=(steal - steal0) / ticks,
        )
        self.server_seconds = (server - server0) / _TICK
        self.helper_seconds = (helper - helper0) / _TICK


def process_ticks(pid: int) -> int:
    """CPU ticks (user + system) of one process and its threads; 0 once it is gone."""
    fields = _stat(pid)
    return int(fields[11]) + int(fields[12]) if fields is not None else 0


def find_process(comm: str) -> int | None:
    """The lowest pid whose command name is `comm` (as /proc/PID/comm shows it), if visible."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == comm:
                    found.append(int(entry.name))
            except OSError:
                continue
    return min(found) if found else None
