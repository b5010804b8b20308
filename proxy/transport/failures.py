"""What went wrong on a call to Gini, from the aiohttp or asyncio exception that says so.

Each failure gets the contract error the caller sees, a bounded metric reason and a log sentence
naming the cause (certificate, hostname, egress proxy, DNS...). Only `proxy.upstream` calls it:
everything above sees `ProxyError`s, never aiohttp exceptions.
"""

from __future__ import annotations

import asyncio
import errno
import ssl

import aiohttp

from proxy.errors import BadGateway, ProxyError, UpstreamTimeout, UpstreamUnavailable
from proxy.transport.aiohttp_client import connecting_over_tls
from proxy.transport.client_cert import take_refusal

# Failures a retry cannot fix (a configuration or trust problem): reported at once.
PERMANENT_REASONS = frozenset(
    {
        "tls_certificate",
        "tls_hostname",
        "tls_handshake",
        "tls_client_certificate",
        "proxy_auth",
        "proxy_refused",
    }
)

# Alerts a server sends about the client's certificate (OpenSSL's reasons for them).
CLIENT_CERTIFICATE_ALERTS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    }
)
_CLIENT_PAIR = "upstream.tls.client_cert_file and client_key_file"


def classify(  # noqa: PLR0911, PLR0912 - one return per kind
    exc: BaseException, context: ssl.SSLContext | None = None
) -> tuple[ProxyError, str, str]:
    """The contract error, the bounded metric reason and a log sentence naming the cause.

    `context` is the SSL context of the call, whose client-certificate watch tells a refused
    client certificate from other closed connections. Order matters: aiohttp's certificate,
    DNS and proxy errors are all ClientConnectorErrors. The sentence may quote OpenSSL's reason
    (fixed texts such as "certificate has expired"), never a URL or header that could hold a
    credential.
    """
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        code = getattr(cert_error, "verify_code", None)
        detail = getattr(cert_error, "verify_message", None) or type(cert_error).__name__
        if code in _HOSTNAME_CODES:
            return _tls_error(), "tls_hostname", f"TLS hostname mismatch: {detail}"
        return _tls_error(), "tls_certificate", f"TLS certificate not trusted: {detail}"
    refused = client_certificate_refusal(exc, context)
    if refused is not None:
        return _tls_error(), "tls_client_certificate", refused
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
        where = _where(exc)
        return UpstreamUnavailable(), "proxy_connect", f"egress proxy cannot be reached{where}"
    if isinstance(exc, aiohttp.ClientConnectorError) and _reset_in_tls_handshake(exc):
        return (
            _tls_error(),
            "tls_handshake",
            "TLS handshake failed: the server closed the connection during the handshake "
            "(does it require a client certificate? see upstream.tls.client_cert_file)",
        )
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return UpstreamUnavailable(), "dns", f"DNS lookup of the upstream host failed{_where(exc)}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
        return UpstreamUnavailable(), "connect", f"cannot connect to the upstream{_where(exc)}"
    if isinstance(exc, asyncio.TimeoutError):  # includes aiohttp's socket read timeout
        return UpstreamTimeout(), "timeout", "no answer in time"
    ssl_error = _ssl_cause(exc)
    if ssl_error is not None:
        # An alert on the first read after a TLS 1.3 handshake, about something other than
        # our certificate (those were named above).
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


def client_certificate_sentence(alert: str | None, sent: bool | None) -> str:
    """What to tell the operator about a refused client certificate (`sent`: None if unknown)."""
    if alert == "TLSV13_ALERT_CERTIFICATE_REQUIRED" or sent is False:
        why = f" ({alert})" if alert else ""
        return (
            f"Gini asked for a client certificate and got none{why}: "
            f"set {_CLIENT_PAIR} to the pair Gini issued or registered."
        )
    why = f" ({alert})" if alert else " (the connection was closed right after the handshake)"
    return (
        f"Gini refused the client certificate{why}: check that {_CLIENT_PAIR} hold the pair "
        "Gini registered, issued by a CA Gini trusts, and not expired."
    )


def client_certificate_refusal(exc: BaseException, context: ssl.SSLContext | None) -> str | None:
    """The log sentence if `exc` is Gini refusing the client certificate, else None."""
    alert = _ssl_cause(exc)
    if alert in CLIENT_CERTIFICATE_ALERTS:
        return client_certificate_sentence(alert, None)
    # Closed without a word (or a bare handshake_failure in TLS 1.2): refused only if the
    # server asked for a certificate on a connection it then said nothing more on.
    inner = getattr(exc, "os_error", None)
    closed = (
        isinstance(exc, aiohttp.ServerDisconnectedError | ConnectionResetError | BrokenPipeError)
        or isinstance(inner, ConnectionResetError | BrokenPipeError)
        or (isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE))
    )
    if not (closed or alert == "SSLV3_ALERT_HANDSHAKE_FAILURE"):
        return None
    asked = take_refusal(context)
    return None if asked is None else client_certificate_sentence(None, asked.sent_certificate)


def _where(exc: BaseException) -> str:
    """` (host:port)` of a connection attempt, when the exception knows it."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f" ({exc.host}:{exc.port})"
    return ""


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
        # aiohttp's own SSL errors subclass ssl.SSLError without OpenSSL's reason: the one
        # they wrap (`os_error`) has it.
        inner = getattr(current, "os_error", None)
        for candidate in (inner, current):
            if isinstance(candidate, ssl.SSLError) and not isinstance(
                candidate, aiohttp.ClientError
            ):
                reason = candidate.reason or candidate.strerror
                return str(reason or type(candidate).__name__)
        current = current.__cause__ or current.__context__
    return None
