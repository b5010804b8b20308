"""Running the listeners: startup, signals, and the graceful drain (docs/operations.md).

Shutdown sequence on the first SIGTERM/SIGINT: `/readyz` turns 503 at once; requests keep being
served for `drain_delay_seconds` (Kubernetes removes the endpoint meanwhile); then the listener
closes, new requests on kept-alive connections get 503 `draining`, in-flight ones get up to
`shutdown_grace_seconds` to finish, upstream sessions close, exit 0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from aiohttp import web

from proxy import __version__, exitcodes
from proxy.admin import Connections, build_admin_app, json_errors
from proxy.app import FORWARD, Services, build_proxy_app
from proxy.config import Address, Config
from proxy.config.summary import startup_summary
from proxy.errors import StartupError
from proxy.lifecycle import Lifecycle
from proxy.log import Redactor, configure_logging
from proxy.vending.keyguard import IdentityKeyChanged
from proxy.vending.stores import StoreOpenError
from proxy.web.aiohttp_server import ListenerRunner, install_server_header
from proxy.web.connections import ConnectionGuard, descriptor_budget
from proxy.web.middleware import observer
from proxy.web.targets import pre_routing

log = logging.getLogger("proxy.server")

CANCEL_AFTER = 0.5

YOUNG_COLLECTION_THRESHOLD = 10_000
"""Net allocations between two collections of the youngest generation (CPython's default: 700).

A flow-1 request leaves no cyclic garbage behind, yet at the default the collector ran about
once per 30 requests at 32 connections, walking the objects of every request in flight each
time: 3.4 % of the proxy's CPU (callbacks on `gc.callbacks`, 10 s of wrk). At 10,000 it ran 13
times in 26,000 requests. Garbage cycles from error paths wait a little longer to be freed."""


@contextlib.contextmanager
def tuned_collector() -> Iterator[None]:
    """While serving: the startup heap frozen out of collections, fewer young collections;
    the previous thresholds come back afterwards (tests run the proxy in their process)."""
    # Everything allocated so far lives as long as the process: keep the collector from
    # walking it again on every generation-2 pass.
    gc.freeze()
    previous = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()


async def _start_site(runner: web.AppRunner, address: Address, what: str) -> None:
    site = web.TCPSite(runner, address.host, address.port, backlog=1024, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        raise StartupError(f"cannot listen on {address} ({what}): {exc.strerror or exc}") from None


def make_runners(services: Services) -> tuple[ListenerRunner, ListenerRunner]:
    """The proxy and admin runners, configured as production runs them (tests use these too).

    Both listeners' connections are bounded by `client_timeouts` and by their own connection
    limit, fitted to the open-file limit obtained (`descriptor_budget`), so a flood of
    connections to one port cannot take the descriptors the other one needs."""
    install_server_header()
    config = services.config
    limits = descriptor_budget(config)
    log.info(
        "connection limits",
        extra={"max_connections": limits.max_connections,
               "admin_max_connections": limits.admin_max_connections,
               "open_file_limit": limits.open_file_limit},
    )  # fmt: skip
    guard = ConnectionGuard(
        "listen",
        config.client_timeouts,
        limits.max_connections,
        services.metrics,
        config.max_header_bytes,
    )
    admin_guard = ConnectionGuard(
        "admin_listen",
        config.client_timeouts,
        limits.admin_max_connections,
        None,
        config.max_header_bytes,
    )
    observe = observer(
        config,
        services.metrics,
        services.routes,
        services.lifecycle,
        services.access_log,
        services.inbound_keys,
        services.caller,
    )
    proxy_app = build_proxy_app(services)
    proxy_runner = ListenerRunner(
        proxy_app,
        guard,
        pre_routing(observe, config.max_header_bytes, proxy_app[FORWARD]),
        handler_cancellation=True,  # a caller that disconnects cancels its upstream call
        access_log=None,  # the middleware writes the access log, with route templates
        # The grace period is waited for in `_drain`; aiohttp only cancels the stragglers.
        shutdown_timeout=CANCEL_AFTER,
    )
    admin_runner = ListenerRunner(
        build_admin_app(services, Connections(limits, guard, admin_guard)),
        admin_guard,
        json_errors,
        access_log=None,
        shutdown_timeout=1,
    )
    return proxy_runner, admin_runner


async def run(services: Services, on_ready: Callable[[], None] | None = None) -> int:
    """Serve until a signal arrives, then drain; returns the process exit code."""
    config = services.config
    log.info("starting", extra=startup_summary(config, __version__, services.identity_key_id))
    proxy_runner, admin_runner = make_runners(services)
    stop = asyncio.Event()
    force = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now", extra={"signal": signal.Signals(signum).name})
            force.set()
        else:
            log.info("signal received: draining", extra={"signal": signal.Signals(signum).name})
            stop.set()

    def on_hangup() -> None:
        log.info("SIGHUP: re-reading secret files")
        services.reloader.trigger()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    graceful = True
    try:
        try:
            await proxy_runner.setup()
        except (StoreOpenError, IdentityKeyChanged) as exc:
            raise StartupError(str(exc)) from None
        await admin_runner.setup()
        await _start_site(proxy_runner, config.listen, "listen")
        await _start_site(admin_runner, config.admin_listen, "admin_listen")
        log.info(
            "gini-auth-proxy ready",
            extra={"listen": str(config.listen), "admin_listen": str(config.admin_listen)},
        )
        with tuned_collector():
            if on_ready is not None:
                on_ready()
            await stop.wait()
            code = await _drain(services, proxy_runner, force)
        graceful = code == exitcodes.OK
        return code
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        if graceful:  # after a second signal nothing is waited for any more
            await admin_runner.cleanup()
            await proxy_runner.cleanup()


async def _drain(services: Services, proxy_runner: ListenerRunner, force: asyncio.Event) -> int:
    config = services.config
    lifecycle = services.lifecycle
    lifecycle.draining = True
    forced = asyncio.create_task(force.wait())
    try:
        await asyncio.wait([forced], timeout=config.drain_delay_seconds)
        if force.is_set():
            return exitcodes.FORCED
        lifecycle.refusing = True
        cleanup = asyncio.create_task(
            _close_listener(proxy_runner, lifecycle, config.shutdown_grace_seconds)
        )
        await asyncio.wait([cleanup, forced], return_when=asyncio.FIRST_COMPLETED)
        if not cleanup.done():
            cleanup.cancel()
            return exitcodes.FORCED
        await cleanup
    finally:
        forced.cancel()
    log.info("drained; exiting")
    return exitcodes.OK


async def _close_listener(runner: ListenerRunner, lifecycle: Lifecycle, grace: float) -> None:
    """Stop accepting, let in-flight requests finish within `grace`, then close everything."""
    for site in list(runner.sites):
        await site.stop()
    if runner.server is not None:
        runner.server.pre_shutdown()  # idle keep-alive connections close now, busy ones after
    if not await lifecycle.wait_idle(grace):
        log.warning("grace period over; cancelling requests still in flight",
                    extra={"in_flight": lifecycle.in_flight})  # fmt: skip
    await runner.cleanup()


def run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run `main` on uvloop when it is installed, else on the default asyncio loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def serve(config: Config) -> int:
    """`gini-auth-proxy serve`: log setup, then run until drained; returns the exit code.

    A StartupError propagates: cli logs it and exits 3."""
    configure_logging(config.logging.level, Redactor(config.secrets()), fmt=config.logging.format)

    return run_async(lambda: run(Services(config)))
