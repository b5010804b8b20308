"""Which secrets reload and how each one is put in force (docs/configuration.md, "Reloading").

Reloadable: `client.secret` (verified with Gini first), `inbound_auth.keys`, `store.password`
(new pool connections), `upstream.egress_proxy.password` and the `upstream.tls` files (new
upstream connections), `jwt.signing_keys` (the whole list: signing and the JWKS switch at
once). Restart-only, a change is only logged: `identity.hmac_key`, `store.encryption_key` and
the config file itself (listen addresses, store URL, ...).
Only `{file:}` sources are watched: `{env:}` and inline values cannot change in a running
process.

A new source is one `reloader.register(SecretSource(...))` call in `register_sources`, with
an `apply` that swaps the attribute its consumer reads.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import aiohttp

from proxy.config import MIN_INBOUND_KEY_BYTES, Config
from proxy.config.jwt import pem_blocks
from proxy.config.reload import (
    InvalidSecret,
    Reloader,
    SecretSource,
    Verdict,
    read_files,
    text_value,
)
from proxy.config.secret import Secret
from proxy.errors import ProxyError
from proxy.log import register_secrets
from proxy.transport.tls import build_context
from proxy.upstream import basic_auth

if TYPE_CHECKING:
    from proxy.forwarding.handler import Forwarder
    from proxy.signing.signer import JwtSigner
    from proxy.upstream import Upstream
    from proxy.vending.gini import GiniClient
    from proxy.vending.stores import CredentialStore
    from proxy.web.accesslog import AccessLog
    from proxy.web.middleware import InboundKeys


class Services(Protocol):
    """The holders a reload swaps values in: `proxy.app.Services` is one. Declared here so that
    this module depends on what it changes, not on the composition root that builds it."""

    config: Config
    access_log: AccessLog
    forwarder: Forwarder
    gini: GiniClient
    inbound_keys: InboundKeys | None
    jwt_signer: JwtSigner | None
    store: CredentialStore | None
    upstream: Upstream


HMAC_KEY_NOTE = (
    "a different identity.hmac_key maps every user to a new, empty Gini user: "
    "put the old key back unless that is intended"
)


def file_of(secret: Secret, numbered: bool = False) -> Path | None:
    """The file a secret was read from (None for env and inline values).

    `numbered`: the source names one line of a key file (`file:PATH#3`).
    """
    if not secret.source.startswith("file:"):
        return None
    path = secret.source[len("file:") :]
    if numbered:
        path = path.rpartition("#")[0]
    return Path(path)


def inbound_keys(contents: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """A key file: one key per line, `#` comments and blank lines skipped, as at startup."""
    lines = text_value(contents).splitlines()
    keys = tuple(
        line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")
    )
    if not keys:
        raise InvalidSecret("the file holds no key")
    short = sum(len(key.encode()) < MIN_INBOUND_KEY_BYTES for key in keys)
    if short:
        raise InvalidSecret(f"{short} key(s) shorter than {MIN_INBOUND_KEY_BYTES} bytes")
    return tuple(key.encode() for key in keys)


def remember_secrets(services: Services) -> Callable[[Iterable[str]], None]:
    """Values read on reload join the log redactor and the access log's list."""

    def remember(values: Iterable[str]) -> None:
        fresh = [value for value in values if len(value) >= 4]
        register_secrets(fresh)
        access = services.access_log
        access.secrets = tuple(dict.fromkeys((*access.secrets, *fresh)))

    return remember


def register_sources(reloader: Reloader, services: Services) -> None:
    """Every `{file:}` secret of the config, reloadable or restart-only."""
    _client_secret(reloader, services)
    _inbound_keys(reloader, services)
    _store_password(reloader, services)
    _egress_password(reloader, services)
    _tls_files(reloader, services)
    _jwt_keys(reloader, services)
    _restart_only(reloader, services)


def _client_secret(reloader: Reloader, services: Services) -> None:
    config = services.config
    path = file_of(config.client.secret)
    if path is None:
        return
    client_id = config.client.id
    # A client that vends anonymous users is known to be enabled for the User Center; one
    # that is not would be refused there whatever its secret, so it is probed with /login.
    via_user_center = config.anonymous is not None

    async def verify(value: str) -> Verdict:
        try:
            status = await services.gini.probe_client_secret(
                basic_auth(client_id, value), via_user_center
            )
        except ProxyError:
            return "unavailable"
        if 200 <= status < 300:
            return "accepted"
        return "refused" if 400 <= status < 500 and status != 429 else "unavailable"

    def apply(value: str) -> None:
        basic = basic_auth(client_id, value)
        services.forwarder.basic = basic
        services.gini.basic = basic

    source = SecretSource(
        "client.secret",
        (path,),
        text_value,
        config.client.secret.value,
        apply,
        verify,
        secrets=lambda value: (value, basic_auth(client_id, value)),
    )
    reloader.register(source)
    hint = reloader.urgent("client.secret")
    services.forwarder.on_client_refused = hint
    services.gini.on_client_refused = hint


def _inbound_keys(reloader: Reloader, services: Services) -> None:
    auth, holder = services.config.inbound_auth, services.inbound_keys
    if auth is None or holder is None or not auth.keys:
        return
    path = file_of(auth.keys[0], numbered=True)
    if path is None:
        return

    def apply(keys: tuple[bytes, ...]) -> None:
        holder.keys = keys

    reloader.register(
        SecretSource(
            "inbound_auth.keys",
            (path,),
            inbound_keys,
            holder.keys,
            apply,
            secrets=lambda keys: [key.decode() for key in keys],
        )
    )


def _store_password(reloader: Reloader, services: Services) -> None:
    store_config = services.config.store
    if store_config is None or store_config.password is None or services.store is None:
        return
    path = file_of(store_config.password)
    if path is None:
        return
    from proxy.vending.stores.health import GuardedStore  # noqa: PLC0415
    from proxy.vending.stores.postgres import PostgresStore  # noqa: PLC0415 - only with a PostgreSQL store

    store = services.store
    if isinstance(store, GuardedStore):  # requests see the store through its health gate
        store = store.inner
    if not isinstance(store, PostgresStore):
        return

    def apply(value: str) -> None:
        store.password = value  # asked for by every new pool connection

    reloader.register(
        SecretSource(
            "store.password",
            (path,),
            text_value,
            store_config.password.value,
            apply,
            secrets=lambda value: (value,),
        )
    )


def _egress_password(reloader: Reloader, services: Services) -> None:
    egress = services.config.upstream.egress_proxy
    if egress is None or egress.password is None or egress.username is None:
        return
    path = file_of(egress.password)
    if path is None:
        return
    username = egress.username

    def apply(value: str) -> None:
        # Read per request by every Gini call: the next CONNECT carries the new credentials.
        services.upstream.proxy_headers = {
            "Proxy-Authorization": aiohttp.encode_basic_auth(username, value)
        }

    reloader.register(
        SecretSource(
            "upstream.egress_proxy.password",
            (path,),
            text_value,
            egress.password.value,
            apply,
            secrets=lambda value: (value, aiohttp.encode_basic_auth(username, value)),
        )
    )


def _tls_files(reloader: Reloader, services: Services) -> None:
    """The CA bundle and client certificate: counted and applied on SIGHUP and every interval
    (the context also checks its files by itself on use, every 10 s)."""
    tls_config = services.config.upstream.tls
    if tls_config is None or not tls_config.files:
        return
    paths = tuple(tls_config.files)

    def load(contents: tuple[bytes, ...]) -> tuple[bytes, ...]:
        if not all(content.strip() for content in contents):
            raise InvalidSecret("a TLS file is empty")
        try:
            build_context(tls_config)  # a half-rotated pair must not count as applied
        except (OSError, ssl.SSLError) as exc:
            raise InvalidSecret(f"the TLS files do not load ({type(exc).__name__})") from None
        return contents

    try:
        initial = read_files(paths)
    except OSError:
        return
    reloader.register(
        SecretSource(
            "upstream.tls",
            paths,
            load,
            initial,
            lambda _: _refresh_tls(services),
        )
    )


def _jwt_keys(reloader: Reloader, services: Services) -> None:
    """`jwt.signing_keys`: the whole list at once, so adding a key, moving it first and
    dropping the old one are each one edit of the Secret (docs/security.md's runbook)."""
    jwt_config, signer = services.config.jwt, services.jwt_signer
    if jwt_config is None or signer is None:
        return
    keys = jwt_config.signing_keys
    files = [file_of(key) for key in keys]
    paths = tuple(path for path in files if path is not None)
    if not paths:
        return
    algorithm = jwt_config.algorithm
    from proxy.config.signing_keys import SigningKeyError  # noqa: PLC0415 - cryptography, only in jwt setups
    from proxy.signing.signer import build_key_set  # noqa: PLC0415

    def load(contents: tuple[bytes, ...]) -> tuple[str, ...]:
        read = iter(contents)
        texts = [
            key.value if path is None else text_value((next(read),))
            for key, path in zip(keys, files, strict=True)
        ]
        pems = tuple(pem for text in texts for pem in pem_blocks(text))
        try:
            build_key_set(pems, algorithm)  # a bad list is never applied
        except SigningKeyError as exc:
            raise InvalidSecret(str(exc)) from None
        return pems

    def apply(pems: tuple[str, ...]) -> None:
        signer.replace_keys(pems)

    reloader.register(
        SecretSource(
            "jwt.signing_keys",
            paths,
            load,
            tuple(pem for key in keys for pem in pem_blocks(key.value)),
            apply,
            secrets=lambda pems: pems,
        )
    )


def _refresh_tls(services: Services) -> None:
    services.upstream.tls.refresh()  # False when the context already picked them up by itself


def _restart_only(reloader: Reloader, services: Services) -> None:
    config = services.config
    watched = [("identity.hmac_key", config.identity.hmac_key, HMAC_KEY_NOTE)]
    if config.store is not None:
        watched.append(("store.encryption_key", config.store.encryption_key, ""))
    for name, secret, note in watched:
        path = file_of(secret)
        if path is not None:
            reloader.register(
                SecretSource(
                    name, (path,), text_value, secret.value, secrets=lambda v: (v,), note=note
                )
            )
    if config.source_file is not None:
        try:
            (initial,) = read_files((config.source_file,))
        except OSError:
            return
        reloader.register(
            SecretSource("config file", (config.source_file,), lambda c: c[0], initial)
        )
