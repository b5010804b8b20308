"""The simulated Gini User Center (user.gini.net): OAuth token endpoint and anonymous users."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from proxy.sandbox.auth import require_client_basic, require_client_token
from proxy.sandbox.common import (
    CONFIG_KEY,
    OAUTH_JSON,
    STATE_KEY,
    SimError,
    SimulatorConfig,
    config_of,
    json_response,
    state_of,
)
from proxy.sandbox.middleware import make_middleware
from proxy.sandbox.models import User
from proxy.sandbox.state import SimulatorState
from proxy.sandbox.uploads import digest_stream

MIN_PASSWORD_LENGTH = 6  # reference §4.2
MAX_JSON_BODY = 64 * 1024
# inferred: one "@", something on both sides, no whitespace; Gini's exact rule is unknown
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
# RFC 6749 §5.1: token answers must not be cached.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _form_value(form: Mapping[str, Any], name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


async def issue_token(request: web.Request) -> web.Response:
    """GET|POST /oauth/token: client_credentials or password grant.

    grant_type may come in the query (documented) or the form body (the refresh example
    does so); form values are percent-decoded, so iOS's ``%40`` for ``@`` works.
    """
    require_client_basic(request)
    form: Mapping[str, Any] = await request.post() if request.method == "POST" else {}
    grant_type = request.query.get("grant_type") or _form_value(form, "grant_type")
    state, config = state_of(request), config_of(request)
    if grant_type == "client_credentials":
        token = state.issue_token("client", config.client_id, config.client_token_lifetime)
        state.client_tokens_issued += 1
        body = {
            "access_token": token.value,
            "token_type": "bearer",
            "expires_in": config.client_token_lifetime,
            "scope": "read",
        }
        return json_response(body, content_type=OAUTH_JSON, headers=_NO_STORE)
    if grant_type == "password":
        user = _check_password(state, _form_value(form, "username"), _form_value(form, "password"))
        token = state.issue_token("user", user.id, config.token_lifetime)
        state.user_logins += 1
        body = {
            "access_token": token.value,
            "token_type": "bearer",
            "expires_in": config.token_lifetime,
        }
        return json_response(body, content_type=OAUTH_JSON, headers=_NO_STORE)
    if not grant_type:
        raise SimError(400, "Missing grant type")
    # Includes refresh_token: the sandbox client is not configured for refresh tokens.
    raise SimError(400, f"Unsupported grant type: {grant_type}", code="unsupported_grant_type")


def _check_password(state: SimulatorState, username: str | None, password: str | None) -> User:
    user = state.find_user(username) if username else None
    if user is None or password is None or user.password != password:
        raise SimError(400, "Bad credentials", code="invalid_grant")
    return user


async def _json_object(request: web.Request) -> dict[str, Any]:
    kept = (await digest_stream(request.content, keep_up_to=MAX_JSON_BODY)).kept
    try:
        body = json.loads(kept) if kept is not None else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise SimError(400, "Body must be a JSON object")
    return body


def _validate_email(value: object) -> str:
    if not isinstance(value, str) or not _EMAIL.fullmatch(value):
        raise SimError(400, "Invalid email")
    return value


def _validate_password(value: object) -> str:
    if not isinstance(value, str) or len(value) < MIN_PASSWORD_LENGTH:
        raise SimError(400, f"Password must have at least {MIN_PASSWORD_LENGTH} characters")
    return value


async def create_user(request: web.Request) -> web.Response:
    """POST /api/users (client token): 201 + Location, empty body; 400 if invalid or taken."""
    require_client_token(request)
    body = await _json_object(request)
    email = _validate_email(body.get("email"))
    password = _validate_password(body.get("password"))
    state = state_of(request)
    user = state.add_user(email, password)
    if user is None:
        raise SimError(400, "Email already in use")  # reference §4.2: 400 for an existing email
    state.users_created += 1
    location = f"{config_of(request).user_center_url}/api/users/{user.id}"
    return web.Response(status=201, headers={"Location": location})


def _user_from_path(request: web.Request) -> User:
    user = state_of(request).user_by_id(request.match_info["id"])
    if user is None:
        raise SimError(404, "User not found", code="not_found")
    return user


async def get_user(request: web.Request) -> web.Response:
    """GET /api/users/{id} (client token) → ``{"id", "email"}``."""
    require_client_token(request)
    user = _user_from_path(request)
    return json_response({"id": user.id, "email": user.email}, content_type=OAUTH_JSON)


async def update_user(request: web.Request) -> web.Response:
    """PUT /api/users/{id} (client token): change password and/or email → 204 (inferred)."""
    require_client_token(request)
    user = _user_from_path(request)
    body = await _json_object(request)
    if "password" in body:
        new_password = _validate_password(body["password"])
        if body.get("oldPassword") != user.password:
            raise SimError(400, "oldPassword does not match")
        user.password = new_password
    if "email" in body:
        new_email = _validate_email(body["email"])
        old = body.get("oldEmail")
        if not isinstance(old, str) or old.lower() != user.email.lower():
            raise SimError(400, "oldEmail does not match")
        if not state_of(request).rename_user(user, new_email):
            raise SimError(400, "Email already in use")
    return web.Response(status=204)


async def check_token(request: web.Request) -> web.Response:
    """GET /oauth/check_token?token=...: ``user_name`` is confirmed; the rest is Spring-style
    and inferred (reference §4.6). No auth required, as the old SDK sent none."""
    state = state_of(request)
    token = state.find_token(request.query.get("token", ""), "user")
    if token is None:
        raise SimError(400, "Token was not recognised", code="invalid_token")
    expires = int(time.time() + (token.expires_at - state.now()))
    body = {
        "user_name": token.subject,
        "client_id": config_of(request).client_id,
        "active": True,
        "scope": ["read"],
        "exp": expires,
    }
    return json_response(body, content_type=OAUTH_JSON)


def create_user_center_app(state: SimulatorState, config: SimulatorConfig) -> web.Application:
    """Build the User Center app sharing ``state`` and ``config`` with the Pay API app.

    It sends no X-Request-Id: that is only documented for the Pay API.
    """
    app = web.Application(middlewares=[make_middleware("uc")])
    app[STATE_KEY] = state
    app[CONFIG_KEY] = config
    app.router.add_get("/oauth/token", issue_token)
    app.router.add_post("/oauth/token", issue_token)
    app.router.add_get("/oauth/check_token", check_token)
    app.router.add_post("/api/users", create_user)
    app.router.add_get("/api/users/{id}", get_user)
    app.router.add_put("/api/users/{id}", update_user)
    return app
