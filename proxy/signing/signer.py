"""Per-user JWTs for flow 1 in jwt mode, their cache, and the key set the JWKS publishes.

The keys live in one immutable `KeySet` that `replace_keys` swaps in a single assignment: a
request in flight keeps the set it started with, and the secret reloader only has to call
`replace_keys` with the new PEMs. A JWT is signed once per user and reused until a margin
before it expires, so a request costs a cache lookup, not a signature. A cached JWT signed by
a key that no longer signs is not reused: after a rotation every user gets a fresh one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jwt
from cachetools import LRUCache

from proxy.config import ClientConfig
from proxy.config.jwt import JwtConfig, pem_blocks
from proxy.config.signing_keys import SigningKey, SigningKeyError, load_signing_key
from proxy.signing.metrics import JwtMetrics

log = logging.getLogger("proxy.jwt")

MAX_REFRESH_MARGIN = 60
DEFAULT_MAX_CACHED = 100_000
"""Seconds a JWKS answer may be cached (by Gini, or a CDN in front of the Ingress)."""


@dataclass(frozen=True, slots=True)
class KeySet:
    """The published keys, the first of which signs, and the JWKS document for them."""

    keys: tuple[SigningKey, ...]
    jwks: bytes  # the serialised JWKS, built once per key set

    @property
    def signing(self) -> SigningKey:
        return self.keys[0]


@dataclass(frozen=True, slots=True)
class _Cached:
    header: str  # `Bearer <jwt>`
    kid: str
    reuse_until: float


def build_key_set(pems: Sequence[str], algorithm: str) -> KeySet:
    """Load every PEM (first signs); SigningKeyError names the index of a bad one."""
    if not pems:
        raise SigningKeyError("at least one signing key is needed")
    keys: list[SigningKey] = []
    for index, pem in enumerate(pems):
        try:
            key = load_signing_key(pem, algorithm)
        except SigningKeyError as exc:
            raise SigningKeyError(f"signing_keys[{index}] {exc}") from None
        if any(k.kid == key.kid for k in keys):
            raise SigningKeyError(f"signing_keys[{index}] is listed twice")
        keys.append(key)
    document = {"keys": [key.jwk for key in keys]}
    return KeySet(tuple(keys), json.dumps(document, separators=(",", ":")).encode())


class JwtSigner:
    """Signs and caches the `X-JWT-Authorization` value of each user identifier."""

    def __init__(
        self,
        config: JwtConfig,
        client: ClientConfig,
        metrics: JwtMetrics | None = None,
        *,
        max_cached: int = DEFAULT_MAX_CACHED,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.lifetime = config.lifetime_seconds
        # Reused until this long before `exp`: a request sent with it still has a minute (or a
        # fifth of a short lifetime) of validity left for the network and Gini's clock.
        self.margin = min(MAX_REFRESH_MARGIN, config.lifetime_seconds // 5)
        self._client_id = client.id
        self._claims = self._claims_for(client.secret.value)
        self._identifier_claim = config.claims.user_identifier
        self._cache: LRUCache[str, _Cached] = LRUCache(max_cached)
        self._first_seen: dict[str, float] = {}
        pems = [pem for key in config.signing_keys for pem in pem_blocks(key.value)]
        self._keys = self._adopt(build_key_set(pems, config.algorithm))
        if metrics is not None:
            metrics.watch(self.signing_key_age, lambda: len(self._keys.keys))

    @property
    def keys(self) -> KeySet:
        return self._keys

    def _claims_for(self, client_secret: str) -> dict[str, str]:
        names = self.config.claims
        claims = {"iss": self.config.issuer, names.client_id: self._client_id}
        if names.client_secret is not None:
            claims[names.client_secret] = client_secret
        return claims

    def use_client_secret(self, client_secret: str) -> None:
        """A rotated `client.secret` (verified with Gini): with a client-secret claim, every
        JWT signed from now on carries it, and none signed with the old one is reused."""
        claims = self._claims_for(client_secret)
        if claims != self._claims:
            self._claims = claims
            self._cache.clear()

    def check_keys(self, pems: Sequence[str]) -> None:
        """SigningKeyError unless `replace_keys(pems)` would succeed."""
        build_key_set(pems, self.config.algorithm)

    def replace_keys(self, pems: Sequence[str]) -> KeySet:
        """Swap in a new list of PEM keys (first signs). A bad list raises SigningKeyError
        and changes nothing: the old keys stay in use."""
        keys = build_key_set(pems, self.config.algorithm)
        previous = self._keys.signing.kid
        self._keys = self._adopt(keys)
        if keys.signing.kid != previous:
            log.info(
                "JWT signing key changed",
                extra={"kid": keys.signing.kid, "previous_kid": previous},
            )
        return keys

    def _adopt(self, keys: KeySet) -> KeySet:
        now = self.clock()
        self._first_seen = {k.kid: self._first_seen.get(k.kid, now) for k in keys.keys}
        if self.metrics is not None:
            self.metrics.signing_kid(keys.signing.kid)
        return keys

    def signing_key_age(self) -> float:
        return max(0.0, self.clock() - self._first_seen[self._keys.signing.kid])

    def header_for(self, identifier: str) -> str:
        """`Bearer <jwt>` for this user: the cached one while reusable, else a fresh one."""
        cached = self._cache.get(identifier)
        signing = self._keys.signing
        now = self.clock()
        if cached is not None and now < cached.reuse_until and cached.kid == signing.kid:
            return cached.header
        issued = int(now)
        payload = {
            **self._claims,
            self._identifier_claim: identifier,
            "iat": issued,
            "exp": issued + self.lifetime,
        }
        token = jwt.encode(
            payload, signing.private, algorithm=signing.algorithm, headers={"kid": signing.kid}
        )
        header = "Bearer " + token
        self._cache[identifier] = _Cached(header, signing.kid, issued + self.lifetime - self.margin)
        if self.metrics is not None:
            self.metrics.signed.inc()
        return header

    def rejected(self, identifier: str, header: str) -> None:
        """Gini answered 401 to a request carrying `header`: log its kid, count it, and sign
        anew for that user next time."""
        cached = self._cache.get(identifier)
        if cached is not None and cached.header == header:
            del self._cache[identifier]
        try:
            kid = jwt.get_unverified_header(header.removeprefix("Bearer "))["kid"]
        except (jwt.InvalidTokenError, KeyError):
            kid = "unknown"
        log.warning("Gini refused a signed JWT (401)", extra={"kid": kid})
        if self.metrics is not None:
            self.metrics.rejected.inc()

    def __len__(self) -> int:
        return len(self._cache)
