"""The admin listener: Prometheus metrics, liveness, readiness and a status page for humans."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import __version__
from .app import SERVICES, Services

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""Returns None when healthy, else a short reason (no secrets) for `/readyz`."""

READINESS_CHECKS = web.AppKey("gini_proxy_readiness_checks", list[tuple[str, ReadinessCheck]])


async def metrics(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    body = generate_latest(services.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    if services.lifecycle.draining:
        return web.json_response({"status": "unavailable", "reason": "draining"}, status=503)
    for name, check in request.app[READINESS_CHECKS]:
        reason = await check()
        if reason is not None:
            return web.json_response(
                {"status": "unavailable", "reason": f"{name}: {reason}"}, status=503
            )
    return web.json_response({"status": "ready"})


async def status(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    config = services.config
    lifecycle = services.lifecycle
    return web.json_response(
        {
            "version": __version__,
            "uptime_seconds": round(time.time() - lifecycle.started_at, 1),
            "draining": lifecycle.draining,
            "in_flight": lifecycle.in_flight,
            "listen": str(config.listen),
            "public_url": config.public_url,
            "upstreams": {
                "pay_api": config.upstream.pay_api,
                "user_center": config.upstream.user_center,
            },
            "identifier_cache_entries": len(services.deriver),
        }
    )


def build_admin_app(services: Services) -> web.Application:
    """The app behind `admin_listen`; it shares `services` with the proxy app."""
    app = web.Application()
    app[SERVICES] = services
    app[READINESS_CHECKS] = []
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    return app
