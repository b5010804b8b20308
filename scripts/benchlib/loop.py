"""Event-loop choice shared by the bench servers: the same rule as `proxy.server.run_async`."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web


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


def baseline_arguments(description: str) -> argparse.ArgumentParser:
    """The command line both bench forwarders take (`servers._start_baseline` passes it)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--hmac-key", required=True)
    parser.add_argument("--ca-file", help="extra trusted CA for an https upstream")
    return parser


async def serve_app(app: web.Application, host: str, port: int) -> int:
    """Serve `app` until the process is told to stop (see `run_on_fast_loop`)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    try:
        await asyncio.Event().wait()  # until SIGTERM ends the process
    finally:
        await runner.cleanup()
    return 0


def serve_main(description: str, build: Callable[[], web.Application]) -> int:
    """`main()` of a bench server that takes only `--host` and `--port`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    return run_on_fast_loop(serve_app(build(), args.host, args.port))
