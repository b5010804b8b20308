"""The one SSL context every call to Gini shares, rebuilt when the `upstream.tls` files change
(cert-manager rotates them in place). What the files must hold is checked in `proxy.config.tls`.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from proxy.config.tls import TlsConfig
from proxy.transport.client_cert import watch

log = logging.getLogger("proxy.tls")

CHECK_INTERVAL_SECONDS = 10.0
"""How often the files are re-read to notice a rotation (a hash of a few KB)."""


def build_context(config: TlsConfig | None) -> ssl.SSLContext:
    """The system trust store plus `ca_file`, and the client pair; verification always on."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if config is not None:
        if config.ca_file is not None:
            context.load_verify_locations(cafile=config.ca_file)
        if config.client_cert_file is not None and config.client_key_file is not None:
            context.load_cert_chain(config.client_cert_file, config.client_key_file)
    return watch(context)  # tells a refused client certificate from a closed connection


def _digest(paths: tuple[Path, ...]) -> bytes | None:
    digest = hashlib.sha256()
    try:
        for path in paths:
            digest.update(path.read_bytes())
            digest.update(b"\0")
    except OSError:
        return None
    return digest.digest()


class TlsContext:
    """The one SSL context for upstream calls; `get()` rebuilds it when the files change.

    The check runs on use, at most every `interval` seconds, so an idle proxy reads nothing
    and a busy one pays a monotonic-clock comparison per request. A half-rotated pair (new
    certificate, old key) fails to load and the previous context stays until the next check.
    """

    def __init__(
        self,
        config: TlsConfig | None,
        interval: float = CHECK_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.files = config.files if config is not None else ()
        self.interval = interval
        self.clock = clock
        self._context = build_context(config)
        self._digest = _digest(self.files)
        self._next_check = clock() + interval
        self.rebuilds = 0

    def get(self) -> ssl.SSLContext:
        if self.files and self.clock() >= self._next_check:
            self.refresh()
        return self._context

    def refresh(self) -> bool:
        """Re-read the files; rebuild the context if their contents changed. True if rebuilt."""
        self._next_check = self.clock() + self.interval
        digest = _digest(self.files)
        if digest is None or digest == self._digest:
            return False
        try:
            context = build_context(self.config)
        except (OSError, ssl.SSLError) as exc:
            log.warning(
                "TLS files changed but cannot be loaded; keeping the previous ones",
                extra={"error": type(exc).__name__, "detail": getattr(exc, "reason", None)},
            )
            return False
        self._context, self._digest = context, digest
        self.rebuilds += 1
        log.info("TLS files changed; new connections use them", extra={"rebuilds": self.rebuilds})
        return True
