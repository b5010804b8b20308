"""The jwt section: flow 1 with `client.auth: jwt` against the same proxy in basic mode.

wrk sends one user, so after the first request every JWT comes from the signer's cache: that is
the steady state the 0.95 x target is about. What a cache miss costs (one signature) is
measured apart, in this process, with the proxy's own signer.
"""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.config import build_config
from proxy.signing.signer import JwtSigner

from .servers import CLIENT_ID, CLIENT_SECRET, HMAC_KEY

SIGNATURES = 2000


def write_key(tmp: Path) -> Path:
    """A throwaway ES256 (P-256) signing key for the jwt-mode proxy."""
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp / "jwt-signing.pem"
    path.write_bytes(pem)
    return path


def bench_signer(key: Path, max_cached: int) -> JwtSigner:
    """The proxy's own signer, configured as the bench's jwt-mode proxy is."""
    config = build_config(
        {
            "client": {"id": CLIENT_ID, "secret": CLIENT_SECRET, "auth": "jwt"},
            "identity": {"hmac_key": HMAC_KEY},
            "jwt": {"issuer": "https://bench.invalid", "signing_keys": [{"file": str(key)}]},
        },
        {},
        key.parent,
    )
    assert config.jwt is not None
    return JwtSigner(config.jwt, config.client, max_cached=max_cached)


def sign_cost_us(key: Path) -> float:
    """Microseconds per fresh JWT (cache misses only: every identifier is new)."""
    signer = bench_signer(key, SIGNATURES)
    started = time.perf_counter()
    for n in range(SIGNATURES):
        signer.header_for(f"{n:064x}")
    return (time.perf_counter() - started) / SIGNATURES * 1e6
