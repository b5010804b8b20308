"""`doctor`'s checks of what the config names besides the way to Gini: the client certificate
file, the credential store (SQLite or PostgreSQL) and the response cache's Redis. Each returns
`(ok, detail)`; a detail names an address as host:port, never a URL that may hold a password.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path
from urllib.parse import urlsplit

from proxy.config import StoreConfig
from proxy.config.fleet import FleetConfig
from proxy.config.tracing import TracingConfig
from proxy.errors import ProxyError

CERT_WARN_DAYS = 14
CLIENT_CERT_WARN_DAYS = 30
Result = tuple[bool, str]


def address(url: str, default_port: int) -> str:
    """host:port of a URL, without its user name or password."""
    parts = urlsplit(url)
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    return f"{parts.hostname or 'localhost'}:{port}"


def client_certificate(path: Path) -> Result:
    """The subject and expiry of `upstream.tls.client_cert_file`."""
    from cryptography import x509  # noqa: PLC0415 - only when a client certificate is set

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        return False, f"cannot read {path} ({why(exc)}): check upstream.tls.client_cert_file."
    until = cert.not_valid_after_utc
    days = int((until - datetime.datetime.now(datetime.UTC)).total_seconds() // 86400)
    detail = f"subject {cert.subject.rfc4514_string()}, expires {until:%Y-%m-%d}"
    if days < 0:
        return False, f"{detail}: expired {-days} days ago; renew it with Gini."
    if days < CLIENT_CERT_WARN_DAYS:
        return True, f"{detail} ({days} days left) - expires soon: renew it with Gini."
    return True, f"{detail} ({days} days left)"


def server_certificate(ssl_object: ssl.SSLObject | None) -> str:
    """Version, issuer and expiry of the certificate Gini showed."""
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert or ssl_object is None:
        return "handshake ok"
    issuer = _name(cert.get("issuer", ()))
    expires = ssl.cert_time_to_seconds(str(cert["notAfter"]))
    until = datetime.datetime.fromtimestamp(expires, datetime.UTC)
    days = int((expires - datetime.datetime.now(datetime.UTC).timestamp()) // 86400)
    detail = f"{ssl_object.version()}, issuer {issuer}, expires {until:%Y-%m-%d} ({days} days left)"
    return detail + (" - expires soon" if days < CERT_WARN_DAYS else "")


async def speaks_tls(writer: asyncio.StreamWriter, host: str, timeout: float) -> bool:
    """Whether the server on this connection completes a TLS handshake or answers it with a TLS
    alert (an HTTP server answers 400 in plain text, which is no TLS record)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only asks whether TLS is spoken; nothing is sent
    try:
        async with asyncio.timeout(timeout):
            await writer.start_tls(context, server_hostname=host)
    except ssl.SSLError as exc:
        return "ALERT" in str(exc.reason)
    except (OSError, TimeoutError):
        return False
    return True


async def store(config: StoreConfig, timeout: float) -> Result:
    """Open the credential store as `serve` does, ping it and count its users."""
    from proxy.vending.stores import StoreOpenError, make_store  # noqa: PLC0415 - loads a driver

    sqlite = config.url.startswith("sqlite:")
    where = f"sqlite {config.url[len('sqlite:///') :]}" if sqlite else "postgresql "
    if not sqlite:
        where += address(config.url, 5432)
    credential_store = make_store(config)
    try:
        async with asyncio.timeout(timeout):
            await credential_store.open()  # also checks store.encryption_key against the data
            await credential_store.ping()
            users = await credential_store.count()
    except (StoreOpenError, ProxyError, OSError, TimeoutError) as exc:
        return False, f"{where}: {why(exc)}. Check store.url and that the database runs."
    finally:
        await credential_store.close()
    return True, f"{where}: reachable, encryption key accepted, {users} user(s)"


async def redis(url: str, timeout: float) -> Result:
    """PING the response cache's Redis."""
    import redis.asyncio  # noqa: PLC0415 - only when a Redis is configured
    import redis.exceptions  # noqa: PLC0415

    where = f"redis {address(url, 6379)}"
    client = redis.asyncio.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        async with asyncio.timeout(timeout):
            await client.ping()
    except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
        detail = why(exc) if not isinstance(exc, redis.exceptions.ResponseError) else "refused"
        return False, f"{where}: {detail}. Check response_cache.backend and that Redis runs."
    finally:
        await client.aclose()
    return True, f"{where}: answers PING"


async def fleet(config: FleetConfig, timeout: float) -> Result:
    """The fleet's Redis: reachable, authenticated, answering within the call timeout."""
    from proxy.vending.fleet.remote import make_client, password_holder  # noqa: PLC0415

    client = make_client(config, password_holder(config))
    kind = "cluster" if config.cluster else "single node"
    try:
        async with asyncio.timeout(max(timeout, 5)):
            started = asyncio.get_running_loop().time()
            await client.ping()
            took = (asyncio.get_running_loop().time() - started) * 1000
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        # The class name only: a driver message may quote the URL, which may hold a password.
        return False, f"Redis ({kind}) unreachable: {type(exc).__name__}. Check fleet.redis_url."
    finally:
        await client.aclose()
    detail = f"Redis ({kind}) answered in {took:.0f} ms"
    if took > config.call_timeout_seconds * 1000:
        return False, f"{detail}, over call_timeout_seconds ({config.call_timeout_seconds:g} s)."
    return True, detail


async def collector(tracing: TracingConfig, timeout: float) -> Result:
    """`tracing`: an empty OTLP/HTTP export (valid protobuf, no spans) must be accepted."""
    import aiohttp  # noqa: PLC0415 - only when tracing is configured

    endpoint = tracing.otlp_endpoint  # holds no credentials (check-config refuses them)
    headers = {name: secret.value for name, secret in tracing.headers}
    headers["Content-Type"] = "application/x-protobuf"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout + 5)) as session,
            session.post(endpoint, data=b"", headers=headers) as answer,
        ):
            status = answer.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return False, (
            f"{endpoint} cannot be reached: {why(exc)}. Spans would be dropped (requests are "
            "not affected); check tracing.otlp_endpoint."
        )
    if 200 <= status < 300:
        return True, f"{endpoint} accepts an export ({status})"
    hint = "check tracing.headers" if status in (401, 403) else "check tracing.otlp_endpoint"
    return False, f"{endpoint} answered {status}: {hint}."


def _name(rdns: object) -> str:
    parts = {k: v for rdn in rdns for k, v in rdn} if isinstance(rdns, tuple) else {}
    return str(parts.get("organizationName") or parts.get("commonName") or "?")


def why(exc: BaseException) -> str:
    """A short reason, without a trailing full stop (the caller ends the sentence)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = exc.message if isinstance(exc, ProxyError) else str(exc) or type(exc).__name__
    return text.rstrip(".")
