"""The admin listener: Prometheus metrics, liveness, readiness and a status page for humans."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from proxy import __version__
from proxy.app import SERVICES, Services
from proxy.errors import MethodNotAllowed, NotFound, ProxyError, StoreUnavailable
from proxy.signing.jwks import add_jwks_route
from proxy.web.aiohttp_server import RequestFunction
from proxy.web.connections import ConnectionGuard, ConnectionLimits
from proxy.web.middleware import error_response, new_request_id


@dataclass(frozen=True)
class Connections:
    """The limits decided at startup and the two listeners' guards, for `/status`."""

    limits: ConnectionLimits
    proxy: ConnectionGuard
    admin: ConnectionGuard

    def status(self) -> dict[str, object]:
        return {
            "open": self.proxy.open,
            "max_connections": self.limits.max_connections,
            "configured_max_connections": self.limits.configured_max_connections,
            "admin_open": self.admin.open,
            "admin_max_connections": self.limits.admin_max_connections,
            "open_file_limit": self.limits.open_file_limit,
        }


CONNECTIONS = web.AppKey("gini_proxy_connections", Connections)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition; OpenMetrics or text format as the scraper's Accept header asks."""
    services = request.app[SERVICES]
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(
        body=encode(services.metrics.registry), headers={"Content-Type": content_type}
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    # Deliberately blind to the store and to Gini: flows 1-3 need neither, and a shared
    # database outage must not take every replica out of its Service. The store's state is
    # in /status and gini_proxy_store_up.
    services = request.app[SERVICES]
    if services.lifecycle.draining:
        return error_response(services.lifecycle.draining_error(), new_request_id())
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
                # The URL without credentials: the password is never shown.
                "egress_proxy": (
                    config.upstream.egress_proxy.url if config.upstream.egress_proxy else None
                ),
            },
            # Per upstream: seconds left of a Retry-After pause, breaker state, calls in flight.
            "upstream_protection": {
                name: guard.status() for name, guard in services.upstream.guards.items()
            },
            "identifier_cache_entries": len(services.deriver),
            "identity_key_id": services.identity_key_id,
            "token_caches": {
                flow: {
                    "entries": len(cache),
                    "last_fetch_error": cache.last_error,
                    "last_fetch_error_at": _iso(cache.last_error_at),
                }
                for flow, cache in services.token_caches.items()
            },
            "anonymous_users_enabled": services.anonymous is not None,
            "response_cache": _response_cache(services),
            "store": _store_kind(services),
            "anonymous_users_stored": await _stored_users(services),
            "store_health": _store_health(services),
            "fleet": services.fleet.status() if services.fleet is not None else None,
            "connections": (
                request.app[CONNECTIONS].status() if CONNECTIONS in request.app else None
            ),
        }
    )


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


def _response_cache(services: Services) -> dict[str, object] | None:
    config = services.config.response_cache
    if config is None:
        return None
    return {
        "backend": config.backend.split(":", 1)[0],
        "routes": [route.template for route in config.routes],
        "entries": services.response_cache.entries if services.response_cache else None,
    }


async def _stored_users(services: Services) -> int | None:
    if services.store is None:
        return None
    try:
        return await services.store.count()  # bounded, and at once while the store is down
    except StoreUnavailable:
        return None


def _store_health(services: Services) -> dict[str, object] | None:
    health = services.store_health
    if health is None:
        return None
    origin = health.store.origin
    return {
        # A store this process created empty: expected on a deployment's first start only.
        "created_fresh": origin.created_fresh if origin else None,
        "created_at": _iso(origin.created_at if origin else None),
        "up": health.up,
        "since": _iso(health.since),
        "last_check_at": _iso(health.last_check_at),
        "last_error": health.last_error,  # a class name, never a driver message or a DSN
        "last_error_at": _iso(health.last_error_at),
    }


def _store_kind(services: Services) -> str | None:
    if services.config.store is None:
        return None
    return "sqlite" if services.config.store.url.startswith("sqlite:") else "postgresql"


def json_errors(app_handler: RequestFunction) -> RequestFunction:
    """The admin router's own refusals (an unknown path, a wrong method) as the contract's
    error instead of aiohttp's text pages (`web/aiohttp_server.ListenerRunner` wraps with it)."""

    async def answered(request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await app_handler(request)
        except web.HTTPException as exc:
            error: ProxyError
            if exc.status == 405:
                error = MethodNotAllowed(headers={"Allow": exc.headers.get("Allow", "")})
            else:
                error = NotFound("No such endpoint on the admin listener.")
            return error_response(error, new_request_id())

    return answered


def build_admin_app(services: Services, connections: Connections | None = None) -> web.Application:
    """The app behind `admin_listen`; it shares `services` with the proxy app."""
    app = web.Application()
    app[SERVICES] = services
    if connections is not None:
        app[CONNECTIONS] = connections
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    add_jwks_route(app, services.jwt_signer)
    return app
