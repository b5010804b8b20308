"""The `client.auth` mode and the `jwt` section (Gini's JWT mutual authentication, flow 1).

Kept apart from `parse` so the JWT keys and their checks live in one place; `parse` calls
`read_auth` and `read_jwt`. Every signing key is loaded here already, so `check-config` finds a
key that does not fit the algorithm, or an RSA key that is too short.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proxy.config.pem import PemError, split_pem
from proxy.config.reader import Reader
from proxy.config.secret import Secret

AUTH_MODES = ("basic", "jwt")
_CLAIM = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
# Registered claims the proxy sets itself: a configured claim name must not collide with them.
_RESERVED = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti"})

ALGORITHMS = ("ES256", "RS256")
JWKS_MAX_AGE = 300
"""Seconds Gini (and any cache in between) may keep the published key set: step 2 of the
rotation runbook waits at least this long."""


def pem_blocks(text: str) -> list[str]:
    """The PEM keys in one secret, in order: a file may hold a bundle of several, so the whole
    key set can be one Secret entry that a rotation edits in place. A bundle that is not made
    of complete blocks only (half-written, truncated) raises PemError: dropping the broken tail
    would silently drop a key."""
    return split_pem(text)


@dataclass(frozen=True, slots=True)
class JwtClaims:
    user_identifier: str
    client_id: str
    client_secret: str | None


@dataclass(frozen=True, slots=True)
class JwtConfig:
    issuer: str
    algorithm: str
    signing_keys: tuple[Secret, ...]
    lifetime_seconds: int
    claims: JwtClaims


def read_auth(r: Reader, client: Mapping[str, Any]) -> str:
    mode = r.string(client, "auth", "client.auth", "basic").lower()
    if mode not in AUTH_MODES:
        r.problem("client.auth", f"must be basic or jwt, got {mode!r}")
        return "basic"
    return mode


def read_jwt(r: Reader, data: Mapping[str, Any], auth: str) -> JwtConfig | None:
    keys = ("issuer", "algorithm", "signing_keys", "lifetime_seconds", "claims")
    d = r.section(data, "jwt", "jwt", keys)
    if d is None:
        if auth == "jwt":
            r.problem("jwt", "is required when client.auth is jwt (issuer and signing_keys)")
        return None
    issuer = r.string(d, "issuer", "jwt.issuer")
    if issuer and not _is_issuer(issuer):
        r.problem("jwt.issuer", "must be an https URL or a plain name without spaces")
    algorithm = r.string(d, "algorithm", "jwt.algorithm", "ES256").upper()
    if algorithm not in ALGORITHMS:
        r.problem("jwt.algorithm", f"must be ES256 or RS256, got {algorithm!r}")
    secrets = _signing_keys(r, d, algorithm if algorithm in ALGORITHMS else None)
    lifetime = r.integer(d, "lifetime_seconds", "jwt.lifetime_seconds", 300, 30, 3600)
    return JwtConfig(issuer, algorithm, secrets, lifetime, _claims(r, d))


def _is_issuer(issuer: str) -> bool:
    if "://" in issuer:
        parts = urlsplit(issuer)
        return parts.scheme in ("https", "http") and bool(parts.hostname) and " " not in issuer
    return " " not in issuer and issuer.isprintable()


def _signing_keys(r: Reader, d: Mapping[str, Any], algorithm: str | None) -> tuple[Secret, ...]:
    entries = d.get("signing_keys")
    if not isinstance(entries, list) or not entries:
        r.problem("jwt.signing_keys", "needs a list of at least one key ({file: PATH} each)")
        return ()
    # Key parsing needs `cryptography`: loaded only when a jwt section is configured.
    from proxy.config.signing_keys import SigningKeyError, load_signing_key  # noqa: PLC0415

    secrets: list[Secret] = []
    kids: dict[str, int] = {}
    for index, _ in enumerate(entries):
        path = f"jwt.signing_keys[{index}]"
        secret = r.secret({"key": entries[index]}, "key", path)
        if secret.source == "invalid":
            continue
        secrets.append(secret)
        try:
            blocks = pem_blocks(secret.value)
        except PemError as exc:
            r.problem(path, f"{secret.source} {exc}")
            continue
        if algorithm is None:
            continue
        for number, pem in enumerate(blocks, 1):
            where = f"key {number} of {len(blocks)} " if len(blocks) > 1 else "the key "
            try:
                key = load_signing_key(pem, algorithm)
            except SigningKeyError as exc:
                r.problem(path, f"{where}from {secret.source} {exc}")
                continue
            if key.kid in kids:
                r.problem(path, f"{where}is the same key as jwt.signing_keys[{kids[key.kid]}]")
            kids.setdefault(key.kid, index)
    return tuple(secrets)


def _claims(r: Reader, d: Mapping[str, Any]) -> JwtClaims:
    c = r.section(d, "claims", "jwt.claims", ("user_identifier", "client_id", "client_secret"))
    c = c or {}
    secret_claim = None
    if c.get("client_secret") is not None:
        secret_claim = r.string(c, "client_secret", "jwt.claims.client_secret")
    names: dict[str, str | None] = {
        "user_identifier": r.string(
            c, "user_identifier", "jwt.claims.user_identifier", "x-user-identifier"
        ),
        "client_id": r.string(c, "client_id", "jwt.claims.client_id", "x-client-id"),
        "client_secret": secret_claim,
    }
    seen: set[str] = set()
    for key, name in names.items():
        if name is None:
            continue
        path = f"jwt.claims.{key}"
        if not _CLAIM.match(name):
            r.problem(path, f"{name!r} is not a usable claim name (letters, digits, _ . : -)")
        elif name in _RESERVED:
            r.problem(path, f"{name!r} is a registered claim the proxy sets itself")
        elif name in seen:
            r.problem(path, f"{name!r} is already used by another claim")
        seen.add(name)
    return JwtClaims(str(names["user_identifier"]), str(names["client_id"]), names["client_secret"])
