"""The `/_proxy/` endpoints: token vending (flows 2-4) and the anonymous user's erasure."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from proxy.errors import MethodNotAllowed, NotFound
from proxy.identity import CallerIdentity
from proxy.log import hide
from proxy.metrics import Metrics
from proxy.telemetry.scope import note_source
from proxy.vending.anonymous import AnonymousUsers
from proxy.vending.gini import GiniClient
from proxy.vending.tokens import Token, TokenCache
from proxy.web.expect import ExpectHandler
from proxy.web.middleware import Handler

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
PROXY_ENDPOINTS = {
    "/_proxy/tokens/derived": "POST",
    "/_proxy/tokens/anonymous": "POST",
    "/_proxy/users/anonymous": "DELETE",
}
"""The proxy's own endpoints on the proxy listener, path -> method: routed here, named in the
route table, and answered 405 with `Allow` for any other method."""


def token_response(token: Token, now: float) -> web.Response:
    """RFC 6749-shaped token answer that Gini's mobile SDKs consume unchanged."""
    hide(token.access_token)
    body = {
        "access_token": token.access_token,
        "token_type": "bearer",
        "expires_in": token.seconds_left(now),
    }
    return web.json_response(body, headers=NO_STORE)


class TokenEndpoints:
    """`POST /_proxy/tokens/{derived,anonymous}` and `DELETE /_proxy/users/anonymous`."""

    def __init__(
        self,
        caller: CallerIdentity,
        gini: GiniClient,
        derived_tokens: TokenCache,
        anonymous_tokens: TokenCache,
        anonymous: AnonymousUsers | None,
        metrics: Metrics,
    ):
        self.caller = caller
        self.gini = gini
        self.derived_tokens = derived_tokens
        self.anonymous_tokens = anonymous_tokens
        self.anonymous = anonymous
        self.metrics = metrics

    def _anonymous(self) -> AnonymousUsers:
        if self.anonymous is None:
            raise NotFound("Anonymous users are not enabled: the config has no anonymous section.")
        return self.anonymous

    async def derived(self, request: web.Request) -> web.Response:
        """Flow 2: a Pay API token for the caller's derived user."""
        key = self.caller.identifier(request.headers)
        fetch = lambda: self.gini.derived_login(key)  # noqa: E731
        token, source = await self.derived_tokens.get_sourced(key, fetch)
        self.metrics.token_issued("derived", source)
        note_source(source)
        return token_response(token, self.derived_tokens.clock())

    async def anonymous_token(self, request: web.Request) -> web.Response:
        """Flow 4: a token for the caller's anonymous user, created on first use."""
        key = self.caller.identifier(request.headers)
        users = self._anonymous()
        token, source = await self.anonymous_tokens.get_sourced(key, lambda: users.login(key))
        self.metrics.token_issued("anonymous", source)
        note_source(source)
        return token_response(token, self.anonymous_tokens.clock())

    async def forget_anonymous(self, request: web.Request) -> web.Response:
        """Right to erasure: drop the stored credentials and cached tokens (204, or 404)."""
        key = self.caller.identifier(request.headers)
        users = self._anonymous()
        await self.anonymous_tokens.drop(key)  # every replica's source: the shared copy too
        if not await users.forget(key):
            raise NotFound("No anonymous user is stored for this user id.")
        return web.Response(status=204, headers=NO_STORE)

    def add_routes(
        self,
        router: web.UrlDispatcher,
        expect: ExpectHandler,
        wrap: Callable[[Handler], Handler],
    ) -> None:
        """The endpoints of PROXY_ENDPOINTS, and a JSON 404/405 for any other /_proxy/ path,
        each handler wrapped by `wrap` (the listener's `observer`)."""
        handlers = {
            "/_proxy/tokens/derived": self.derived,
            "/_proxy/tokens/anonymous": self.anonymous_token,
            "/_proxy/users/anonymous": self.forget_anonymous,
        }
        for path, method in PROXY_ENDPOINTS.items():
            router.add_route(method, path, wrap(handlers[path]), expect_handler=expect)
        # Everything else under /_proxy/ is ours too, and never forwarded.
        router.add_route("*", "/_proxy/{tail:.*}", wrap(_unknown), expect_handler=expect)


async def _unknown(request: web.Request) -> web.StreamResponse:
    allowed = PROXY_ENDPOINTS.get(request.path)
    if allowed is not None:
        raise MethodNotAllowed(headers={"Allow": allowed})
    raise NotFound("No such endpoint on this proxy; /_proxy/ paths are never forwarded.")
