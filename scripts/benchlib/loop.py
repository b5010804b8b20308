"""Event-loop choice shared by the bench servers: the same rule as `proxy.server.run_async`."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when uvloop is importable (as the proxy does), else asyncio's default."""
    try:
        import uvloop  # noqa: PLC0415 - optional, exactly like the proxy
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def uses_uvloop() -> bool:
    return loop_factory() is not None


def run_on_fast_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run a server coroutine until SIGTERM or SIGINT, on uvloop when it is installed."""

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        try:
            return await main
        except asyncio.CancelledError:
            return 0

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(guarded())
