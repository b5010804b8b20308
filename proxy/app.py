"""The composition root (`Services`) and the proxy listener's application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from .accesslog import AccessLog
from .anonymous import AnonymousUsers
from .config import Config
from .errors import MethodNotAllowed, NotFound, ProxyError
from .forward import Forwarder, basic_auth
from .gini import GiniClient
from .handlers import TokenEndpoints
from .identity import IdentifierDeriver
from .jwt_metrics import JwtMetrics
from .jwt_signer import JwtSigner
from .lifecycle import Lifecycle
from .metrics import TOKEN_FLOWS, Metrics
from .middlewares import observe
from .routes import GINI_TEMPLATES, RouteTable
from .stores import CredentialStore, make_store
from .tokens import TokenCache
from .upstream import Upstream

if TYPE_CHECKING:
    from .response_cache import ResponseCache

PROXY_ENDPOINTS = {
    "/_proxy/tokens/derived": "POST",
    "/_proxy/tokens/anonymous": "POST",
    "/_proxy/users/anonymous": "DELETE",
}
REFRESH_AHEAD_SECONDS = 30.0
"""A token hit within this many seconds of its refresh margin is renewed in the background."""


@dataclass
class Services:
    """Everything one running proxy owns; built once from the config, shared by both listeners."""

    config: Config
    metrics: Metrics = field(default_factory=Metrics)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    upstream: Upstream = field(init=False)
    deriver: IdentifierDeriver = field(init=False)
    forwarder: Forwarder = field(init=False)
    response_cache: ResponseCache | None = field(init=False)
    routes: RouteTable = field(init=False)
    gini: GiniClient = field(init=False)
    token_caches: dict[str, TokenCache] = field(init=False)
    store: CredentialStore | None = field(init=False)
    anonymous: AnonymousUsers | None = field(init=False)
    endpoints: TokenEndpoints = field(init=False)
    access_log: AccessLog = field(init=False)
    jwt_signer: JwtSigner | None = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        lifecycle = self.lifecycle
        self.metrics.in_flight.set_function(lambda: lifecycle.in_flight)
        self.upstream = Upstream(config.upstream, self.metrics)
        self.deriver = IdentifierDeriver(config.identity.hmac_key.encode())
        self.response_cache = None
        if config.response_cache is not None:
            from .response_cache import ResponseCache  # noqa: PLC0415 - loads its backends

            self.response_cache = ResponseCache(
                config.response_cache, config.identity.hmac_key.encode(), self.metrics
            )
        self.jwt_signer = None
        if config.jwt is not None:  # published by the admin listener even in basic mode
            self.jwt_signer = JwtSigner(
                config.jwt,
                config.client,
                JwtMetrics(self.metrics.registry),
                max_cached=config.tokens.max_cached,
            )
        signer = self.jwt_signer if config.client.auth == "jwt" else None
        self.forwarder = Forwarder(
            config, self.upstream, self.deriver, self.response_cache, signer=signer
        )
        self.access_log = AccessLog(tuple(config.secrets()))
        self.routes = RouteTable(GINI_TEMPLATES + tuple(PROXY_ENDPOINTS))
        self.gini = GiniClient(
            self.upstream, basic_auth(config.client.id, config.client.secret.value)
        )
        self.token_caches = {flow: self._token_cache(flow) for flow in TOKEN_FLOWS}
        self.store = make_store(config.store) if config.store is not None else None
        self.anonymous = None
        if self.store is not None and config.anonymous is not None:
            self.anonymous = AnonymousUsers(
                self.store,
                self.gini,
                self.token_caches["client"],
                config.anonymous.email_domain,
                self.metrics,
            )
        self.endpoints = TokenEndpoints(
            config.identity.header,
            self.deriver,
            self.gini,
            self.token_caches["derived"],
            self.token_caches["anonymous"],
            self.anonymous,
            self.metrics,
        )

    def _token_cache(self, flow: str) -> TokenCache:
        errors = self.metrics.token_fetch_errors

        def count_error(error: BaseException) -> None:
            reason = error.code if isinstance(error, ProxyError) else "internal_error"
            errors.labels(flow, reason).inc()

        cache = TokenCache(
            flow,
            1 if flow == "client" else self.config.tokens.max_cached,
            self.config.tokens.refresh_before_expiry_seconds,
            refresh_ahead=REFRESH_AHEAD_SECONDS,
            on_error=count_error,
        )
        self.metrics.token_cache_entries.labels(flow).set_function(lambda: len(cache))
        return cache


SERVICES = web.AppKey("gini_proxy_services", Services)


async def _unknown_proxy_endpoint(request: web.Request) -> web.StreamResponse:
    allowed = PROXY_ENDPOINTS.get(request.path)
    if allowed is not None:
        raise MethodNotAllowed(headers={"Allow": allowed})
    raise NotFound("No such endpoint on this proxy; /_proxy/ paths are never forwarded.")


def build_proxy_app(services: Services) -> web.Application:
    """The app behind `listen`: flow-1 forwarding, token vending, the /_proxy/ endpoints."""
    app = web.Application(
        middlewares=[
            observe(
                services.config,
                services.metrics,
                services.routes,
                services.lifecycle,
                services.access_log,
            )
        ],
        client_max_size=services.config.max_body_bytes,
    )
    app[SERVICES] = services

    async def resources(_: web.Application) -> AsyncIterator[None]:
        # Opened before the listener accepts anything: an unreachable store fails startup.
        if services.store is not None:
            await services.store.open()
        await services.upstream.start()
        if services.response_cache is not None:
            await services.response_cache.start()
        try:
            yield
        finally:
            services.access_log.flush()
            if services.response_cache is not None:
                await services.response_cache.close()
            for cache in services.token_caches.values():
                await cache.close()
            await services.upstream.close()
            if services.store is not None:
                await services.store.close()

    app.cleanup_ctx.append(resources)
    services.endpoints.add_routes(app.router)
    app.router.add_route("*", "/_proxy/{tail:.*}", _unknown_proxy_endpoint)
    app.router.add_route("*", "/{tail:.*}", services.forwarder.handle)
    return app
