"""The simulated Gini Pay API application (pay-api.gini.net)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.sandbox.auth import derived_identifier
from proxy.sandbox.common import (
    CONFIG_KEY,
    PLAIN_JSON,
    RECORD_KEY,
    STATE_KEY,
    SimError,
    SimulatorConfig,
    config_of,
    is_sandbox_path,
    json_response,
    state_of,
)
from proxy.sandbox.documents import add_document_routes
from proxy.sandbox.jwt_auth import JWT_HEADER, JWT_IDENTIFIER_KEY, JwtRefused
from proxy.sandbox.middleware import add_request_id, make_middleware
from proxy.sandbox.payments import add_payment_routes
from proxy.sandbox.sandbox_routes import add_sandbox_routes
from proxy.sandbox.state import SimulatorState
from proxy.sandbox.uploads import digest_stream


async def login(request: web.Request) -> web.Response:
    """POST /login: Basic client auth + X-User-Identifier → a token acting as that derived user.

    Shape from the reference (§3); the JSON content type is inferred there.
    """
    identifier = derived_identifier(request)
    request[RECORD_KEY].namespace = identifier
    await digest_stream(request.content)  # no body is expected; drain whatever came
    state, config = state_of(request), config_of(request)
    token = state.issue_token("derived", identifier, config.token_lifetime)
    state.logins += 1
    body = {
        "access_token": token.value,
        "token_type": "bearer",
        "expires_in": config.token_lifetime,
    }
    return json_response(body, content_type=PLAIN_JSON)


@web.middleware
async def jwt_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Pay API: a request with X-JWT-Authorization acts as the user its verified JWT names."""
    value = request.headers.get(JWT_HEADER)
    if value is None or is_sandbox_path(request.path):
        return await handler(request)
    verifier = request.app[CONFIG_KEY].jwt
    if verifier is None:
        raise SimError(401, "JWT authentication is not configured for this client")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise SimError(401, "X-JWT-Authorization must be `Bearer <jwt>`")
    state = request.app[STATE_KEY]
    try:
        request[JWT_IDENTIFIER_KEY] = await verifier.verify(
            token.strip(), state.wall_time(), state.client_secrets
        )
    except JwtRefused as exc:
        raise SimError(401, str(exc)) from None
    return await handler(request)


def create_pay_api_app(state: SimulatorState, config: SimulatorConfig) -> web.Application:
    """Build the Pay API app sharing ``state`` and ``config`` with the User Center app."""
    # Uploads are streamed by the handlers, so the in-memory body cap only guards
    # request.read()/post() users; keep aiohttp's default.
    app = web.Application(middlewares=[make_middleware("pay"), jwt_middleware])
    app[STATE_KEY] = state
    app[CONFIG_KEY] = config
    app.on_response_prepare.append(add_request_id)
    app.router.add_post("/login", login)
    add_document_routes(app)
    add_payment_routes(app)
    add_sandbox_routes(app)
    return app
