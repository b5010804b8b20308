"""Application factories: the proxy listener's app and the objects it is built from."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from .config import Config
from .errors import NotFound
from .forward import Forwarder
from .identity import IdentifierDeriver
from .lifecycle import Lifecycle
from .metrics import Metrics
from .middlewares import observe
from .routes import GINI_TEMPLATES, RouteTable
from .upstream import Upstream

PROXY_TEMPLATES = ("/_proxy/tokens/derived", "/_proxy/tokens/anonymous", "/_proxy/users/anonymous")


@dataclass
class Services:
    """Everything one running proxy owns; built once from the config."""

    config: Config
    metrics: Metrics = field(default_factory=Metrics)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    upstream: Upstream = field(init=False)
    deriver: IdentifierDeriver = field(init=False)
    forwarder: Forwarder = field(init=False)
    routes: RouteTable = field(init=False)

    def __post_init__(self) -> None:
        self.upstream = Upstream(self.config.upstream, self.metrics)
        self.deriver = IdentifierDeriver(self.config.identity.hmac_key.encode())
        self.forwarder = Forwarder(self.config, self.upstream, self.deriver)
        self.routes = RouteTable(GINI_TEMPLATES + PROXY_TEMPLATES)


SERVICES = web.AppKey("gini_proxy_services", Services)


async def _unknown_proxy_endpoint(request: web.Request) -> web.StreamResponse:
    raise NotFound("No such endpoint on this proxy; /_proxy/ paths are never forwarded.")


def build_proxy_app(services: Services) -> web.Application:
    """The app behind `listen`: flow-1 forwarding, token vending, the /_proxy/ endpoints."""
    app = web.Application(
        middlewares=[
            observe(services.config, services.metrics, services.routes, services.lifecycle)
        ],
        client_max_size=services.config.max_body_bytes,
    )
    app[SERVICES] = services

    async def upstream_session(_: web.Application) -> AsyncIterator[None]:
        await services.upstream.start()
        yield
        await services.upstream.close()

    app.cleanup_ctx.append(upstream_session)
    app.router.add_route("*", "/_proxy/{tail:.*}", _unknown_proxy_endpoint)
    app.router.add_route("*", "/{tail:.*}", services.forwarder.handle)
    return app
