"""Plumbing shared by the simulator's two apps: settings, typed keys, errors and JSON answers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from multidict import CIMultiDict

from proxy.sandbox.state import RecordedRequest, SimulatorState

if TYPE_CHECKING:
    from proxy.sandbox.jwt_auth import JwtVerifier

AppName = Literal["pay", "uc"]

# Versioned vendor type of Pay API JSON answers (reference §1, "Media types").
GINI_JSON = "application/vnd.gini.v1+json"
# User Center answers plain JSON; the charset suffix mimics Spring (inferred).
OAUTH_JSON = "application/json;charset=UTF-8"
PLAIN_JSON = "application/json"

SANDBOX_PREFIX = "/_sandbox/"


@dataclass
class SimulatorConfig:
    """Credentials, lifetimes and public base URLs of one simulator instance."""

    client_id: str
    client_secret: str
    token_lifetime: int
    client_token_lifetime: int
    # Filled in by GiniSimulator.start() once the ports are bound, before any request arrives.
    pay_api_url: str = ""
    user_center_url: str = ""
    # JWT mutual authentication (flow 1), once GiniSimulator.enable_jwt() was called.
    jwt: JwtVerifier | None = None


class SimError(Exception):
    """An error answer; the middleware renders it in the owning app's error format."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str = "invalid_request",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code  # OAuth "error" value, used by the User Center only
        self.headers: dict[str, str] = dict(headers or {})


STATE_KEY = web.AppKey("sandbox_state", SimulatorState)
CONFIG_KEY = web.AppKey("sandbox_config", SimulatorConfig)
RECORD_KEY = web.RequestKey("sandbox_record", RecordedRequest)
REQUEST_ID_KEY = web.RequestKey("sandbox_request_id", str)


def json_bytes(data: Any) -> bytes:
    """Serialise ``data`` compactly as UTF-8 JSON."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(
    data: Any,
    *,
    status: int = 200,
    content_type: str = GINI_JSON,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Build a JSON answer with an explicit Content-Type (vendor types included)."""
    all_headers: CIMultiDict[str] = CIMultiDict(headers or {})
    all_headers["Content-Type"] = content_type
    return web.Response(status=status, body=json_bytes(data), headers=all_headers)


def base_url(host: str, port: int, scheme: str = "http") -> str:
    """The ``scheme://host:port`` origin of a loopback listener (IPv6 hosts bracketed)."""
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def is_sandbox_path(path: str) -> bool:
    """True for the simulator-only routes, which skip auth and fault injection."""
    return path.startswith(SANDBOX_PREFIX)


def state_of(request: web.Request) -> SimulatorState:
    """The shared simulator state of the app serving ``request``."""
    return request.app[STATE_KEY]


def config_of(request: web.Request) -> SimulatorConfig:
    """The simulator settings of the app serving ``request``."""
    return request.app[CONFIG_KEY]


def query_int(request: web.Request, name: str, default: int, *, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``; 400 otherwise."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SimError(400, f"query parameter {name!r} must be an integer") from None
    if not low <= value <= high:
        raise SimError(400, f"query parameter {name!r} must be within [{low}, {high}]")
    return value


def query_float(request: web.Request, name: str, *, high: float) -> float:
    """A non-negative number of seconds from the query (0 when absent); 400 otherwise."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise SimError(400, f"query parameter {name!r} must be a number") from None
    if not 0.0 <= value <= high:  # also rejects NaN
        raise SimError(400, f"query parameter {name!r} must be within [0, {high}]")
    return value
