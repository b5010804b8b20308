"""Authorization parsing and the simulator's three ways of authenticating a caller."""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from aiohttp import web

from proxy.sandbox.common import RECORD_KEY, SimError, SimulatorConfig, config_of, state_of
from proxy.sandbox.jwt_auth import JWT_IDENTIFIER_KEY
from proxy.sandbox.models import Token

USER_IDENTIFIER_HEADER = "X-User-Identifier"


@dataclass(frozen=True)
class BasicCredentials:
    """Decoded HTTP Basic credentials."""

    username: str
    password: str


@dataclass(frozen=True)
class BearerCredentials:
    """An HTTP Bearer token."""

    token: str


Credentials = BasicCredentials | BearerCredentials


def parse_authorization(value: str | None) -> Credentials | None:
    """Parse an Authorization header; None when absent or malformed.

    The scheme is matched case-insensitively: Gini's docs write BEARER, the SDKs send
    Bearer (reference §1), and RFC 9110 says schemes are case-insensitive.
    """
    if not value:
        return None
    scheme, _, param = value.strip().partition(" ")
    param = param.strip()
    if not param:
        return None
    scheme = scheme.lower()
    if scheme == "bearer":
        return BearerCredentials(param)
    if scheme != "basic":
        return None
    try:
        decoded = base64.b64decode(param, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return BasicCredentials(username, password) if colon else None


def is_client(
    credentials: Credentials | None,
    config: SimulatorConfig,
    accepted: frozenset[str] | None = None,
) -> bool:
    """True when ``credentials`` are this simulator's client id and one accepted secret.

    ``accepted`` (the state's ``client_secrets``) replaces the configured secret while a test
    rotates it; during a rotation Gini accepts the old and the new secret side by side.
    """
    if not isinstance(credentials, BasicCredentials):
        return False
    id_ok = hmac.compare_digest(credentials.username.encode(), config.client_id.encode())
    offered = credentials.password.encode()
    secret_ok = False
    for secret in accepted or (config.client_secret,):
        secret_ok |= hmac.compare_digest(offered, secret.encode())
    return id_ok and secret_ok


def _client_ok(request: web.Request) -> bool:
    state = state_of(request)
    credentials = parse_authorization(request.headers.get("Authorization"))
    return not state.reject_client and is_client(
        credentials, config_of(request), state.client_secrets
    )


def pay_namespace(request: web.Request) -> str:
    """Authenticate a Pay API request and return (and record) the namespace it acts as.

    Basic client credentials plus X-User-Identifier act as that derived user; a Bearer token
    from /login or from the User Center password grant acts as its user; a JWT verified by
    `pay_api.jwt_middleware` acts as the user its identifier claim names.
    """
    state = state_of(request)
    credentials = parse_authorization(request.headers.get("Authorization"))
    namespace: str | None
    if JWT_IDENTIFIER_KEY in request:
        namespace = request[JWT_IDENTIFIER_KEY]
    elif isinstance(credentials, BearerCredentials):
        token = state.find_token(credentials.token, "derived", "user")
        namespace = token.namespace() if token is not None else None
        if namespace is None:
            raise SimError(401, "Invalid or expired access token")
    else:
        namespace = derived_identifier(request)
    request[RECORD_KEY].namespace = namespace
    return namespace


def derived_identifier(request: web.Request) -> str:
    """Check Basic client auth and return the X-User-Identifier (Flow 1 and /login)."""
    if not _client_ok(request):
        raise SimError(401, "Bad client credentials")
    identifier = request.headers.get(USER_IDENTIFIER_HEADER, "")
    if not identifier.strip():
        # inferred: Gini does not document this case; the reference suggests 400 or 401
        raise SimError(400, "Missing X-User-Identifier header")
    return identifier


def require_client_basic(request: web.Request) -> None:
    """User Center client authentication (OAuth token endpoint); 401 otherwise."""
    if not _client_ok(request):
        raise SimError(
            401,
            "Full authentication is required to access this resource",
            code="unauthorized",
            # inferred: Spring Security's OAuth2 client realm
            headers={"WWW-Authenticate": 'Basic realm="oauth2/client"'},
        )


def require_client_token(request: web.Request) -> Token:
    """User Center user management: a valid client-credentials Bearer token; 401 otherwise."""
    state = state_of(request)
    credentials = parse_authorization(request.headers.get("Authorization"))
    token = None
    if isinstance(credentials, BearerCredentials) and not state.reject_client:
        token = state.find_token(credentials.token, "client")
    if token is None:
        raise SimError(
            401,
            "Invalid access token",
            code="invalid_token",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return token
