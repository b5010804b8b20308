"""Process lifecycle: readiness, draining and the in-flight count the shutdown waits on."""

from __future__ import annotations

import asyncio
import time

from proxy.errors import Draining


class Lifecycle:
    """Shared by the middleware (counts requests), the admin app (readiness) and the server."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self.draining = False  # readiness is off; requests are still served (pre-stop delay)
        self.refusing = False  # the listener is closing: new requests get 503 `draining`
        self.in_flight = 0
        self._idle: asyncio.Event | None = None

    def request_done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight; False if `timeout` passed first."""
        if self.in_flight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            self._idle = None
        return True

    @staticmethod
    def draining_error() -> Draining:
        # Closes, with `Retry-After: 0`: nothing was forwarded, so the caller may safely retry
        # elsewhere at once (see `Draining`).
        return Draining()
