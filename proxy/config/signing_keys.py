"""JWT signing keys: PEM loading checked against the algorithm, public JWKs and their `kid`.

The `kid` is the RFC 7638 thumbprint of the public key: it is derived from the key itself, so
every replica computes the same one without coordination, and Gini can pick the right key from
the published set while two are in it during a rotation.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

MIN_RSA_BITS = 2048

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class SigningKeyError(ValueError):
    """A signing key cannot be used; the message never quotes the key."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One private key with its public JWK (`kid`, `alg`, `use` included)."""

    kid: str
    algorithm: str
    private: PrivateKey = field(repr=False)
    jwk: dict[str, str] = field(compare=False)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(length, "big"))


def public_members(private: PrivateKey) -> dict[str, str]:
    """The required public members of the JWK (RFC 7518 §6), nothing private."""
    if isinstance(private, rsa.RSAPrivateKey):
        numbers = private.public_key().public_numbers()
        return {"e": _uint(numbers.e), "kty": "RSA", "n": _uint(numbers.n)}
    point = private.public_key().public_numbers()
    return {"crv": "P-256", "kty": "EC", "x": _uint(point.x, 32), "y": _uint(point.y, 32)}


def thumbprint(members: dict[str, str]) -> str:
    """RFC 7638: SHA-256 over the required members, sorted, without whitespace."""
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def load_signing_key(pem: str, algorithm: str) -> SigningKey:
    """Parse a PEM private key and check it fits `algorithm`; SigningKeyError says why not."""
    try:
        private = serialization.load_pem_private_key(pem.encode("utf-8"), password=None)
    except (ValueError, TypeError):
        # TypeError: an encrypted key (a password would be needed). Neither message is quoted:
        # cryptography's texts are generic, but nothing here may echo key material.
        raise SigningKeyError(
            "is not an unencrypted PEM private key (PKCS#8 or traditional)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - unsupported key types raise library-specific errors
        raise SigningKeyError(f"cannot be loaded ({type(exc).__name__})") from None
    if algorithm == "ES256":
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise SigningKeyError("ES256 needs an EC P-256 key (openssl ecparam -name prime256v1)")
        if not isinstance(private.curve, ec.SECP256R1):
            raise SigningKeyError(f"ES256 needs the P-256 curve, not {private.curve.name}")
    elif algorithm == "RS256":
        if not isinstance(private, rsa.RSAPrivateKey):
            raise SigningKeyError("RS256 needs an RSA key (openssl genpkey -algorithm RSA)")
        if private.key_size < MIN_RSA_BITS:
            raise SigningKeyError(
                f"RSA keys need at least {MIN_RSA_BITS} bits, got {private.key_size}"
            )
    else:
        raise SigningKeyError(f"unknown algorithm {algorithm!r}")
    members = public_members(private)
    kid = thumbprint(members)
    jwk = {**members, "kid": kid, "alg": algorithm, "use": "sig"}
    return SigningKey(kid, algorithm, private, jwk)
