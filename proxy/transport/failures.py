"""What went wrong on a call to Gini, from the aiohttp or asyncio exception that says so.

Each failure gets the contract error the caller sees, a bounded metric reason and a log sentence
naming the cause (certificate, hostname, egress proxy, DNS...). Only `proxy.upstream` calls it:
everything above sees `ProxyError`s, never aiohttp exceptions.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

from proxy.errors import BadGateway, ProxyError, UpstreamTimeout, UpstreamUnavailable
from proxy.transport.aiohttp_client import connecting_over_tls

# Failures a retry cannot fix (a configuration or trust problem): reported at once.
PERMANENT_REASONS = frozenset(
    {"tls_certificate", "tls_hostname", "tls_handshake", "proxy_auth", "proxy_refused"}
)


def classify(exc: BaseException) -> tuple[ProxyError, str, str]:  # noqa: PLR0911 - one per kind
    """The contract error, the bounded metric reason and a log sentence naming the cause.

    Order matters: aiohttp's certificate, DNS and proxy errors are all ClientConnectorErrors.
    The sentence may quote OpenSSL's reason (fixed texts such as "certificate has expired"),
    never a URL or header that could hold a credential.
    """
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        code = getattr(cert_error, "verify_code", None)
        detail = getattr(cert_error, "verify_message", None) or type(cert_error).__name__
        if code in _HOSTNAME_CODES:
            return _tls_error(), "tls_hostname", f"TLS hostname mismatch: {detail}"
        return _tls_error(), "tls_certificate", f"TLS certificate not trusted: {detail}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return _tls_error(), "tls_handshake", f"TLS handshake failed: {_ssl_reason(exc)}"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        if exc.status == 407:
            return (
                BadGateway("The egress proxy refused this proxy's credentials."),
                "proxy_auth",
                "egress proxy refused the proxy credentials (407 Proxy Authentication Required)",
            )
        return (
            BadGateway("The egress proxy refused the connection to Gini."),
            "proxy_refused",
            f"egress proxy refused the tunnel to Gini (status {exc.status})",
        )
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return UpstreamUnavailable(), "proxy_connect", "egress proxy cannot be reached"
    if isinstance(exc, aiohttp.ClientConnectorError) and _reset_in_tls_handshake(exc):
        return (
            _tls_error(),
            "tls_handshake",
            "TLS handshake failed: the server closed the connection during the handshake "
            "(does it require a client certificate? see upstream.tls.client_cert_file)",
        )
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return UpstreamUnavailable(), "dns", "DNS lookup of the upstream host failed"
    if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
        return UpstreamUnavailable(), "connect", "cannot connect to the upstream"
    if isinstance(exc, asyncio.TimeoutError):  # includes aiohttp's socket read timeout
        return UpstreamTimeout(), "timeout", "no answer in time"
    ssl_error = _ssl_cause(exc)
    if ssl_error is not None:
        # TLS 1.3 servers check the client certificate after the handshake: a missing or
        # refused one shows up as an alert on the first read, not as a connect error.
        return _tls_error(), "tls_handshake", f"TLS session refused by the server: {ssl_error}"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return (
            BadGateway("Gini closed the connection before answering."),
            "disconnect",
            "connection closed before the answer",
        )
    return BadGateway(), "bad_response", "malformed answer"


# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_HOSTNAME_CODES = frozenset({62, 64})


def _tls_error() -> ProxyError:
    return BadGateway("The TLS connection to Gini could not be verified; see the proxy log.")


def _reset_in_tls_handshake(exc: aiohttp.ClientConnectorError) -> bool:
    """A reset while connecting to an https origin: TCP was up, so the handshake was refused."""
    return connecting_over_tls(exc) and isinstance(exc.os_error, ConnectionResetError)


def _ssl_reason(exc: BaseException) -> str:
    cause = _ssl_cause(exc)
    return cause if cause is not None else type(exc).__name__


def _ssl_cause(exc: BaseException) -> str | None:
    """OpenSSL's reason for an ssl.SSLError anywhere in the exception chain, if there is one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return str(current.reason or current.strerror or type(current).__name__)
        inner = getattr(current, "os_error", None)  # aiohttp's connector errors wrap it there
        if isinstance(inner, ssl.SSLError):
            return str(inner.reason or inner.strerror or type(inner).__name__)
        current = current.__cause__ or current.__context__
    return None
