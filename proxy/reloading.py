"""Which secrets reload and how each one is put in force (docs/configuration.md, "Reloading").

Reloadable: `client.secret` (verified with Gini first), `inbound_auth.keys`, `store.password`
(new pool connections), `upstream.egress_proxy.password` and the `upstream.tls` files (new
upstream connections), `jwt.signing_keys` (the whole list: signing and the JWKS switch at
once). Restart-only, a change is only logged: `identity.hmac_key`, `store.encryption_key` and
the config file itself (listen addresses, store URL, ...).
Only `{file:}` sources are watched (a `Secret` with a `path`): `{env:}` and inline values cannot
change in a running process.

Each source is one `SecretSource`: the config layer says how its file reads, and `apply` hands
the new value to the one object that owns it (`Credentials`, the inbound key holder, the store,
the TLS context, the JWT signer); nothing here reaches inside them.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from proxy.config import Config
from proxy.config.inbound import reread_keys
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
from proxy.credentials import Credentials, Probe
from proxy.transport.tls import build_context

HMAC_KEY_NOTE = (
    "a different identity.hmac_key maps every user to a new, empty Gini user: "
    "put the old key back unless that is intended"
)


class KeyHolder(Protocol):
    """`web.middleware.InboundKeys`: the inbound keys in force, replaced whole."""

    keys: tuple[tuple[bytes, str | None], ...]  # (key, caller name)


class SigningKeys(Protocol):
    """`signing.signer.JwtSigner`'s key list (`check_keys` raises a ValueError for a bad one)."""

    def check_keys(self, pems: Sequence[str]) -> None: ...

    def replace_keys(self, pems: Sequence[str]) -> object: ...


@dataclass(frozen=True, slots=True)
class Owners:
    """The objects a reload hands new values to (`proxy.app.Services` builds them)."""

    credentials: Credentials
    send_probe: Callable[[Probe], Awaitable[int]]  # `GiniClient.send_probe`: verifies a secret
    inbound_keys: KeyHolder | None
    store_password: Callable[[str], None] | None  # the store's: for its new connections
    refresh_tls: Callable[[], object]  # `transport.tls.TlsContext.refresh`
    signer: SigningKeys | None


def register_sources(reloader: Reloader, config: Config, owners: Owners) -> None:
    """Every `{file:}` secret of the config, reloadable or restart-only."""
    credentials = owners.credentials
    if _one_value(
        reloader,
        "client.secret",
        config.client.secret,
        credentials.use_client_secret,  # the Basic header and the JWT claims at once
        lambda value: credentials.verify(value, owners.send_probe),
        credentials.client_secret_forms,
    ):
        credentials.on_refused(reloader.urgent("client.secret"))
    _inbound_keys(reloader, config, owners.inbound_keys)
    if config.store is not None and owners.store_password is not None:
        _one_value(reloader, "store.password", config.store.password, owners.store_password)
    egress = config.upstream.egress_proxy
    if egress is not None:  # the next connection to the egress proxy carries the new password
        name, use = "upstream.egress_proxy.password", credentials.use_egress_password
        _one_value(reloader, name, egress.password, use, None, credentials.egress_secret_forms)
    _tls_files(reloader, config, owners.refresh_tls)
    _jwt_keys(reloader, config, owners.signer)
    # Restart-only: a change is logged, never applied.
    _one_value(reloader, "identity.hmac_key", config.identity.hmac_key, note=HMAC_KEY_NOTE)
    if config.store is not None:
        _one_value(reloader, "store.encryption_key", config.store.encryption_key)
    if config.source_file is not None:
        try:
            (initial,) = read_files((config.source_file,))
        except OSError:
            return
        reloader.register(
            SecretSource("config file", (config.source_file,), lambda c: c[0], initial)
        )


def _one_value(
    reloader: Reloader,
    name: str,
    secret: Secret | None,
    apply: Callable[[str], None] | None = None,
    verify: Callable[[str], Awaitable[Verdict]] | None = None,
    secrets: Callable[[str], Iterable[str]] = lambda value: (value,),
    note: str = "",
) -> bool:
    """A file holding one value, watched when the secret was read from one (True then)."""
    if secret is None or secret.path is None:
        return False
    paths = (secret.path,)
    reloader.register(
        SecretSource(name, paths, text_value, secret.value, apply, verify, secrets, note)
    )
    return True


def _inbound_keys(reloader: Reloader, config: Config, holder: KeyHolder | None) -> None:
    auth = config.inbound_auth
    if auth is None or holder is None or not auth.keys or auth.keys[0].path is None:
        return
    path = auth.keys[0].path

    Keys = tuple[tuple[bytes, str | None], ...]

    def load(contents: tuple[bytes, ...]) -> Keys:
        try:
            keys = reread_keys(path, text_value(contents))
        except ValueError as exc:
            raise InvalidSecret(str(exc)) from None
        return tuple((key.encode(), key.caller) for key in keys)

    def apply(keys: Keys) -> None:
        holder.keys = keys

    source = SecretSource("inbound_auth.keys", (path,), load, holder.keys, apply)
    source.secrets = lambda keys: [key.decode() for key, _ in keys]
    reloader.register(source)


def _tls_files(reloader: Reloader, config: Config, refresh: Callable[[], object]) -> None:
    """The CA bundle and client certificate: counted and applied on SIGHUP and every interval
    (the context also checks its files by itself on use, every 10 s)."""
    tls_config = config.upstream.tls
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
    reloader.register(SecretSource("upstream.tls", paths, load, initial, lambda _: refresh()))


def _jwt_keys(reloader: Reloader, config: Config, signer: SigningKeys | None) -> None:
    """`jwt.signing_keys`: the whole list at once, so adding a key, moving it first and
    dropping the old one are each one edit of the Secret (docs/security.md's runbook)."""
    if config.jwt is None or signer is None:
        return
    keys = config.jwt.signing_keys
    paths = tuple(key.path for key in keys if key.path is not None)
    if not paths:
        return

    def load(contents: tuple[bytes, ...]) -> tuple[str, ...]:
        read = iter(contents)
        texts = [key.value if key.path is None else text_value((next(read),)) for key in keys]
        pems = tuple(pem for text in texts for pem in pem_blocks(text))
        try:
            signer.check_keys(pems)  # a bad list is never applied
        except ValueError as exc:  # SigningKeyError: imported here, it would load cryptography
            raise InvalidSecret(str(exc)) from None
        return pems

    initial = tuple(pem for key in keys for pem in pem_blocks(key.value))
    source = SecretSource("jwt.signing_keys", paths, load, initial, signer.replace_keys)
    source.secrets = lambda pems: pems
    reloader.register(source)
