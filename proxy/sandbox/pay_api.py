"""The simulated Gini Pay API application (pay-api.gini.net)."""

from __future__ import annotations

from aiohttp import web

from proxy.sandbox.auth import derived_identifier
from proxy.sandbox.common import (
    CONFIG_KEY,
    PLAIN_JSON,
    RECORD_KEY,
    STATE_KEY,
    SimulatorConfig,
    config_of,
    json_response,
    state_of,
)
from proxy.sandbox.documents import add_document_routes
from proxy.sandbox.jwt_auth import jwt_middleware
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
