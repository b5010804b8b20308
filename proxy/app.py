"""The composition root (`Services`) and the proxy listener's application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.config import Config
from proxy.config.reload import Reloader
from proxy.credentials import Credentials
from proxy.errors import ProxyError
from proxy.forwarding.handler import Forwarder
from proxy.identity import CallerIdentity, IdentifierDeriver, identity_key_id
from proxy.lifecycle import Lifecycle
from proxy.log import register_secrets
from proxy.metrics import TOKEN_FLOWS, Metrics
from proxy.metrics.families import audit_counters, spans_dropped_counter, store_up_gauge
from proxy.reloading import Owners, register_sources
from proxy.telemetry.audit import AuditLog
from proxy.telemetry.tracing import Tracing
from proxy.upstream import Upstream
from proxy.vending.anonymous import AnonymousUsers
from proxy.vending.endpoints import PROXY_ENDPOINTS, TokenEndpoints
from proxy.vending.gini import GiniClient
from proxy.vending.keyguard import check_pin, check_store
from proxy.vending.stores import CredentialStore, make_store
from proxy.vending.stores.health import GuardedStore, StoreHealth
from proxy.vending.tokens import TokenCache
from proxy.web.accesslog import AccessLog
from proxy.web.expect import expect_handler
from proxy.web.middleware import Handler, InboundKeys, inbound_check, observer
from proxy.web.routes import GINI_TEMPLATES, RouteTable
from proxy.web.telemetry import RequestTelemetry

if TYPE_CHECKING:
    from proxy.forwarding.cache import ResponseCache
    from proxy.signing.signer import JwtSigner
    from proxy.vending.fleet.flight import Fleet
    from proxy.vending.fleet.pauses import SharedPauses

REFRESH_AHEAD_SECONDS = 30.0
"""A token hit within this many seconds of its refresh margin is renewed in the background."""


@dataclass
class Services:
    """Everything one running proxy owns; built once from the config, shared by both listeners."""

    config: Config
    metrics: Metrics = field(default_factory=Metrics)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    credentials: Credentials = field(init=False)
    upstream: Upstream = field(init=False)
    deriver: IdentifierDeriver = field(init=False)
    caller: CallerIdentity = field(init=False)
    forwarder: Forwarder = field(init=False)
    response_cache: ResponseCache | None = field(init=False)
    routes: RouteTable = field(init=False)
    gini: GiniClient = field(init=False)
    token_caches: dict[str, TokenCache] = field(init=False)
    store: CredentialStore | None = field(init=False)
    store_health: StoreHealth | None = field(init=False)
    anonymous: AnonymousUsers | None = field(init=False)
    endpoints: TokenEndpoints = field(init=False)
    access_log: AccessLog = field(init=False)
    identity_key_id: str = field(init=False)
    inbound_keys: InboundKeys | None = field(init=False)
    reloader: Reloader = field(init=False)
    jwt_signer: JwtSigner | None = field(init=False)
    audit: AuditLog | None = field(init=False)
    tracing: Tracing | None = field(init=False)
    telemetry: RequestTelemetry | None = field(init=False)
    fleet: Fleet | None = field(init=False)
    pauses: SharedPauses | None = field(init=False)

    def __post_init__(self) -> None:
        config = self.config
        lifecycle = self.lifecycle
        self.metrics.in_flight.set_function(lambda: lifecycle.in_flight)
        self.deriver = IdentifierDeriver(config.identity.hmac_key.encode())
        self.caller = CallerIdentity(config.identity.header, self.deriver)
        self.identity_key_id = identity_key_id(config.identity.hmac_key.encode())
        self.metrics.set_build_info(self.identity_key_id)
        self.response_cache = None
        if config.response_cache is not None:
            from proxy.forwarding.cache import ResponseCache  # noqa: PLC0415 - loads its backends

            self.response_cache = ResponseCache(
                config.response_cache, config.identity.hmac_key.encode(), self.metrics
            )
        self.jwt_signer = None
        if config.jwt is not None:  # published by the admin listener even in basic mode
            # PyJWT and cryptography load only here: a basic-mode proxy does without them.
            from proxy.signing.metrics import JwtMetrics  # noqa: PLC0415
            from proxy.signing.signer import JwtSigner  # noqa: PLC0415

            self.jwt_signer = JwtSigner(
                config.jwt,
                config.client,
                JwtMetrics(self.metrics.registry),
                max_cached=config.tokens.max_cached,
            )
        self.credentials = Credentials(config, self.jwt_signer)
        self.upstream = Upstream(config.upstream, self.metrics, self.credentials)
        for name, guard in self.upstream.guards.items():
            self.metrics.upstream_pause.labels(name).set_function(guard.pause_left)
            self.metrics.upstream_breaker.labels(name).set_function(guard.breaker_open)
        self.forwarder = Forwarder(
            config,
            self.upstream,
            self.caller,
            self.response_cache,
            authorizer=self.credentials.flow1,
        )
        self.access_log = AccessLog(tuple(config.secrets()))
        self.audit = None
        if config.audit is not None:
            self.audit = AuditLog(config.audit, *audit_counters(self.metrics.registry))
            self.audit.secrets = self.access_log.secrets
        self.tracing = None
        if config.tracing is not None:
            self.tracing = Tracing(config.tracing, spans_dropped_counter(self.metrics.registry))
            self.tracing.stats = self.metrics.hot  # exemplars of the duration histograms
            self.upstream.tracing = self.tracing
        self.telemetry = None
        if self.audit is not None or self.tracing is not None:
            self.telemetry = RequestTelemetry(self.audit, self.tracing, self.caller)
        self.routes = RouteTable(GINI_TEMPLATES + tuple(PROXY_ENDPOINTS))
        self.gini = GiniClient(self.upstream, self.credentials)
        self.fleet = self.pauses = None
        if config.fleet is not None:  # redis-py loads only here
            from proxy.vending.fleet.build import build_fleet, share_pauses  # noqa: PLC0415

            self.fleet = build_fleet(config, self.metrics.registry)
            self.pauses = share_pauses(self.fleet, self.upstream.guards)
        self.token_caches = {flow: self._token_cache(flow) for flow in TOKEN_FLOWS}
        self.store, self.store_health = self._store()
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
            self.caller,
            self.gini,
            self.token_caches["derived"],
            self.token_caches["anonymous"],
            self.anonymous,
            self.metrics,
        )
        self._reloadable()

    def _reloadable(self) -> None:
        """The holders a reload swaps values in, and the registry of `{file:}` secrets."""
        auth = self.config.inbound_auth
        self.inbound_keys = InboundKeys(auth) if auth is not None else None
        self.reloader = Reloader(
            self.metrics, self.config.reload_interval_seconds, self._remember_secrets
        )
        owners = Owners(
            self.credentials,
            self.gini.send_probe,
            self.inbound_keys,
            self.store.use_password if self.store is not None else None,
            self.upstream.tls.refresh,
            self.jwt_signer,
        )
        register_sources(self.reloader, self.config, owners)
        if self.fleet is not None:
            from proxy.vending.fleet.build import watch_password  # noqa: PLC0415

            watch_password(self.reloader, self.config, self.fleet)
        if self.audit is not None:
            self.reloader.on_result = self.audit.reloaded

    def start_telemetry(self) -> None:
        """Open the audit log and start the trace exporter (in the running loop)."""
        if self.audit is not None:
            self.audit.open()
        if self.tracing is not None:
            self.tracing.start()

    async def start_fleet(self) -> None:
        if self.fleet is not None:
            await self.fleet.remote.start()  # a Redis outage is logged, never fatal
        if self.pauses is not None:
            self.pauses.start()

    async def close_fleet(self) -> None:
        if self.pauses is not None:
            await self.pauses.close()
        if self.fleet is not None:
            await self.fleet.remote.close()

    async def close_telemetry(self) -> None:
        if self.audit is not None:
            self.audit.close()
        if self.tracing is not None:
            await self.tracing.close()

    def _remember_secrets(self, values: Iterable[str]) -> None:
        """Values read on reload join the log redactor and the access log's list."""
        fresh = [value for value in values if len(value) >= 4]
        register_secrets(fresh)
        self.access_log.secrets = tuple(dict.fromkeys((*self.access_log.secrets, *fresh)))
        if self.audit is not None:
            self.audit.secrets = self.access_log.secrets

    def _store(self) -> tuple[CredentialStore | None, StoreHealth | None]:
        """The store as requests use it (deadlines, fail-fast) and its background check."""
        if self.config.store is None:
            return None, None
        store = make_store(self.config.store)
        health = StoreHealth(store, store_up_gauge(self.metrics.registry))
        return GuardedStore(store, health), health

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
            shared=self.fleet,
        )
        self.metrics.token_cache_entries.labels(flow).set_function(lambda: len(cache))
        return cache


SERVICES = web.AppKey("gini_proxy_services", Services)
FORWARD: web.AppKey[Handler] = web.AppKey("gini_proxy_forward")
"""Flow 1's observed handler: the catch-all route's, which pre-routing also calls directly
(`web.targets.routed_to_forward`)."""


def build_proxy_app(services: Services) -> web.Application:
    """The app behind `listen`: flow-1 forwarding, token vending, the /_proxy/ endpoints."""
    observed = observer(
        services.config,
        services.metrics,
        services.routes,
        services.lifecycle,
        services.access_log,
        services.inbound_keys,
        services.caller,
        services.telemetry,
    )
    app = web.Application(client_max_size=services.config.max_body_bytes)
    app[SERVICES] = services

    async def resources(_: web.Application) -> AsyncIterator[None]:
        # Opened before the listener accepts anything: an unreachable store fails startup,
        # and so does an identity key other than the one the users were derived with.
        check_pin(services.config)
        if services.store is not None:
            await services.store.open()
            try:
                await check_store(services.store, services.identity_key_id)
            except BaseException:
                await services.store.close()
                raise
        await services.upstream.start()
        services.start_telemetry()
        if services.response_cache is not None:
            await services.response_cache.start()
        await services.start_fleet()
        services.reloader.start()
        try:
            yield
        finally:
            await services.reloader.close()
            await services.close_telemetry()
            if services.response_cache is not None:
                await services.response_cache.close()
            for cache in services.token_caches.values():
                await cache.close()
            await services.upstream.close()
            await services.close_fleet()
            if services.store is not None:
                await services.store.close()
            services.access_log.flush()  # last: a closed stdout must not keep anything open

    async def store_checks(_: web.Application) -> AsyncIterator[None]:
        # Runs once `resources` has opened the store, and stops before it closes it.
        health = services.store_health
        if health is not None:
            health.start()
        try:
            yield
        finally:
            if health is not None:
                await health.stop()

    app.cleanup_ctx.append(resources)
    app.cleanup_ctx.append(store_checks)
    expect = expect_handler(
        services.config.max_body_bytes,
        inbound_check(services.config.inbound_auth, services.inbound_keys),
    )
    # Every route is observed, so every answer is: the catch-alls leave no path to the router's
    # own 404/405.
    services.endpoints.add_routes(app.router, expect, observed)
    forward = app[FORWARD] = observed(services.forwarder.handle)
    app.router.add_route("*", "/{tail:.*}", forward, expect_handler=expect)
    return app
