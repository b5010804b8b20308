"""Gini's JWT mutual authentication as the simulator plays it (reference §5).

Gini fetches the backend's JWK set from a URL it was given, caches it, and verifies each
`X-JWT-Authorization: Bearer <jwt>`: signature by the key named by `kid`, `iss`, `exp`, and
the configured user-identifier and client-id claims. What Gini does not document (cache time,
clock leeway, refetch on an unknown kid) is a setting here, with conservative defaults.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
from aiohttp import web

JWT_HEADER = "X-JWT-Authorization"
JWT_IDENTIFIER_KEY = web.RequestKey("sandbox_jwt_identifier", str)
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5)
ALGORITHMS = ("ES256", "RS256")


class JwtRefused(Exception):
    """The token is not accepted; the Pay API answers 401 with this message."""


@dataclass
class JwtSettings:
    """How the simulated Gini verifies JWTs from one backend."""

    jwks_url: str
    issuer: str
    user_identifier_claim: str = "x-user-identifier"
    client_id_claim: str = "x-client-id"
    client_secret_claim: str | None = None  # checked when present in a token
    cache_seconds: float = 60.0  # how long a fetched JWK set is trusted
    refetch_seconds: float = 10.0  # an unknown kid refetches at most this often
    leeway_seconds: float = 0.0  # clock leeway on `exp`


@dataclass
class JwksCache:
    """The last JWK set fetched, by kid, and when; one fetch at a time."""

    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched_at: float = float("-inf")
    fetches: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


class JwtVerifier:
    """Verifies tokens against the backend's JWKS; every refusal is JwtRefused (a 401)."""

    def __init__(self, settings: JwtSettings, client_id: str, client_secret: str):
        self.settings = settings
        self.client_id = client_id
        self.client_secret = client_secret
        self.cache = JwksCache()
        self.verified = 0

    async def _fetch(self) -> None:
        cache = self.cache
        if cache.session is None:
            cache.session = aiohttp.ClientSession(timeout=FETCH_TIMEOUT)
        cache.fetches += 1
        cache.fetched_at = time.monotonic()  # also on failure: no fetch storm on a dead URL
        try:
            async with cache.session.get(self.settings.jwks_url) as answer:
                answer.raise_for_status()
                document = await answer.json(content_type=None)
            keys = jwt.PyJWKSet.from_dict(document).keys
        except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWKSetError):
            return  # keep the keys we had; requests signed with them still verify
        cache.keys = {key.key_id: key for key in keys if key.key_id}

    async def key_for(self, kid: str) -> jwt.PyJWK:
        cache, settings = self.cache, self.settings
        async with cache.lock:
            age = time.monotonic() - cache.fetched_at
            stale = age >= settings.cache_seconds
            if stale or (kid not in cache.keys and age >= settings.refetch_seconds):
                await self._fetch()
        key = cache.keys.get(kid)
        if key is None:
            raise JwtRefused("JWT signed by an unknown key")
        return key

    async def verify(
        self, token: str, wall_clock: float, secrets: frozenset[str] | None = None
    ) -> str:
        """The user identifier the token carries, or JwtRefused. `secrets`: the client secrets
        accepted during a rotation (default: the configured one)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise JwtRefused("Malformed JWT") from None
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or alg not in ALGORITHMS:
            raise JwtRefused("JWT without a kid or with an unsupported algorithm")
        key = await self.key_for(kid)
        if key.algorithm_name != alg:
            raise JwtRefused("JWT algorithm does not match its key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                issuer=self.settings.issuer,
                # exp is checked below, against the simulator's clock (which tests can advance)
                options={"require": ["exp", "iss"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.InvalidIssuerError:
            raise JwtRefused("JWT from an unknown issuer") from None
        except jwt.InvalidTokenError:
            raise JwtRefused("JWT signature or claims invalid") from None
        if not isinstance(claims["exp"], int | float):
            raise JwtRefused("JWT exp is not a number")
        if claims["exp"] + self.settings.leeway_seconds <= wall_clock:
            raise JwtRefused("JWT expired")
        return self._identifier(claims, secrets or frozenset((self.client_secret,)))

    def _identifier(self, claims: dict[str, Any], secrets: frozenset[str]) -> str:
        settings = self.settings
        client_id = claims.get(settings.client_id_claim)
        if not isinstance(client_id, str) or not hmac.compare_digest(
            client_id.encode(), self.client_id.encode()
        ):
            raise JwtRefused("JWT for an unknown client")
        if settings.client_secret_claim is not None and settings.client_secret_claim in claims:
            secret = claims[settings.client_secret_claim]
            offered = secret.encode() if isinstance(secret, str) else b""
            matched = False
            for accepted in sorted(secrets):  # every one compared: timing tells nothing
                matched |= hmac.compare_digest(offered, accepted.encode())
            if not matched:
                raise JwtRefused("JWT with a wrong client secret")
        identifier = claims.get(settings.user_identifier_claim)
        if not isinstance(identifier, str) or not identifier.strip():
            raise JwtRefused("JWT without a user identifier")
        self.verified += 1
        return identifier
