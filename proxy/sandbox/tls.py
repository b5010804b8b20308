"""HTTPS for ``python -m proxy.sandbox``: a server certificate, and optionally a CA whose
client certificates the simulator then requires (Gini's mTLS, rehearsed on one machine)."""

from __future__ import annotations

import ssl
from pathlib import Path


class SandboxTlsError(ValueError):
    """The TLS files cannot be used; the message names the file and the reason."""


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server context from PEM files; with `client_ca`, clients must present a certificate
    that CA issued (the handshake fails without one)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise SandboxTlsError(
            f"cannot use --tls-cert {cert} with --tls-key {key}: {_why(exc)}"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise SandboxTlsError(f"cannot use --client-ca {client_ca}: {_why(exc)}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _why(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)
