"""Keys and helpers shared by the JWT tests: real keys, written where a config can read them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://gini-proxy.test"
JWKS_PATH = "/.well-known/jwks.json"
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def ec_pem(curve: ec.EllipticCurve | None = None) -> str:
    return _pem(ec.generate_private_key(curve or ec.SECP256R1()))


@functools.cache
def rsa_pem(bits: int, n: int = 0) -> str:
    """An RSA key of `bits` (cached: RSA generation is slow; `n` picks another one)."""
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=bits))


def write_keys(folder: Path, *pems: str) -> list[dict[str, str]]:
    """Write each PEM to its own file; the `signing_keys` list that names them."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = []
    for index, pem in enumerate(pems):
        path = folder / f"jwt-key-{index}.pem"
        path.write_text(pem)
        sources.append({"file": str(path)})
    return sources


def jwt_overrides(folder: Path, *pems: str, **jwt: Any) -> dict[str, Any]:
    """`start_proxy` overrides for jwt mode with these keys (first signs)."""
    section = {"issuer": ISSUER, "signing_keys": write_keys(folder, *pems), **jwt}
    return {"client": {"auth": "jwt"}, "jwt": section}
