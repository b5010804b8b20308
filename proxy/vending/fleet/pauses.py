"""A pause from Gini's `Retry-After`, shared by every replica through the fleet's Redis.

The replica that hears the pause writes it (`<prefix>{pause}:<upstream>`, value
`<until in Unix ms>:<status>`, expiring when the pause ends) unless a longer one is already
there; every replica reads both keys with one MGET every `POLL_SECONDS` and applies the live
ones to its guards. The braces keep both keys in one cluster slot, so the MGET works on a
cluster too. Writes never hold up the call that heard the pause (a background task bounded by
`call_timeout_seconds`), and failures only count as fleet errors (op `pause`): while Redis is
away, nothing is read or written and each replica protects itself alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Mapping

from proxy.transport.protection import Guard
from proxy.vending.fleet.remote import FleetDown, Remote

POLL_SECONDS = 0.5
"""How soon the other replicas honour a pause one of them heard (a read of two keys each)."""

# KEYS: the pause. ARGV: until (Unix ms), status, px. Only a longer pause replaces the one held.
EXTEND = """
local current = redis.call('GET', KEYS[1])
if current then
  local held = tonumber(string.match(current, '^(%d+):'))
  if held and held >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
return 1
"""


def parse(value: bytes | None) -> tuple[float, int] | None:
    """`(until in Unix seconds, status)` from a stored pause; None for none or a damaged one."""
    if value is None:
        return None
    until, _, status = value.partition(b":")
    if not until.isdigit() or not status.isdigit():
        return None
    return int(until) / 1000, int(status)


class SharedPauses:
    """The `PauseBoard` of one replica: tells the fleet what it heard, and hears the fleet."""

    def __init__(
        self,
        remote: Remote,
        prefix: str,
        guards: Mapping[str, Guard],
        wall: Callable[[], float] = time.time,
    ):
        self.remote, self.wall = remote, wall
        self.guards = dict(guards)
        self.keys = {name: f"{prefix}{{pause}}:{name}" for name in self.guards}
        self._writes: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None

    def heard(self, upstream: str, until: float, status: int) -> None:
        """Share a pause this replica heard (`until` in Unix seconds), in the background."""
        key = self.keys.get(upstream)
        if key is None or not self.remote.up:
            return
        task = asyncio.get_running_loop().create_task(self._write(key, until, status))
        self._writes.add(task)  # held until done: a task nobody references may be collected
        task.add_done_callback(self._writes.discard)

    @property
    def writing(self) -> int:
        """Writes under way (for tests and a clean shutdown)."""
        return len(self._writes)

    async def _write(self, key: str, until: float, status: int) -> None:
        until_ms = math.ceil(until * 1000)
        left_ms = until_ms - math.floor(self.wall() * 1000)
        if left_ms <= 0:
            return
        script = self.remote.client.eval(EXTEND, 1, key, until_ms, status, left_ms)
        with contextlib.suppress(FleetDown):  # counted by `Remote.call`; the replica acts alone
            await self.remote.call("pause", script)

    async def poll_once(self) -> None:
        """Apply every live pause in Redis to this replica's guards (nothing while it is down)."""
        if not self.remote.up:
            return
        names = list(self.keys)
        try:
            values = await self.remote.call(
                "pause", self.remote.client.mget([self.keys[n] for n in names])
            )
        except FleetDown:
            return
        for name, value in zip(names, values, strict=True):
            pause = parse(value)
            if pause is not None:
                self.guards[name].pause_heard_elsewhere(*pause)

    async def _poll(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(POLL_SECONDS)

    def start(self) -> None:
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        tasks = [*self._writes, *([self._poller] if self._poller is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._poller = None
