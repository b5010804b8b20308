"""The one SSL context every call to Gini shares, rebuilt when the `upstream.tls` files change
(cert-manager rotates them in place). What the files must hold is checked in `proxy.config.tls`.

The files are read only as regular files (a FIFO or a directory is refused, never waited on),
and must be complete PEM blocks and nothing else: OpenSSL would load the complete part of a
half-written file. The check on use runs in a thread of its own, so a hung mount never stalls a
request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from proxy.config.files import read_regular
from proxy.config.pem import PemError, split_pem_bytes
from proxy.config.tls import TlsConfig
from proxy.transport.client_cert import watch

log = logging.getLogger("proxy.tls")

CHECK_INTERVAL_SECONDS = 10.0
"""How often the files are re-read to notice a rotation (a hash of a few KB)."""


def _pem(path: Path) -> bytes:
    """A TLS file's bytes: a regular file of complete PEM blocks (OSError, PemError if not)."""
    data = read_regular(path)
    try:
        split_pem_bytes(data)
    except PemError as exc:
        raise PemError(f"{path} {exc}") from None
    return data


def build_context(config: TlsConfig | None) -> ssl.SSLContext:
    """The system trust store plus `ca_file`, and the client pair; verification always on.

    Raises OSError, ssl.SSLError, or PemError (a half-written file) when the files do not load.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if config is not None:
        if config.ca_file is not None:
            context.load_verify_locations(cadata=_pem(config.ca_file).decode("ascii"))
        if config.client_cert_file is not None and config.client_key_file is not None:
            _pem(config.client_cert_file)  # OpenSSL reads these by path only: checked first
            _pem(config.client_key_file)
            context.load_cert_chain(config.client_cert_file, config.client_key_file)
    return watch(context)  # tells a refused client certificate from a closed connection


def _digest(paths: tuple[Path, ...]) -> bytes | None:
    digest = hashlib.sha256()
    try:
        for path in paths:
            digest.update(read_regular(path))
            digest.update(b"\0")
    except OSError:
        return None
    return digest.digest()


class TlsContext:
    """The one SSL context for upstream calls; `get()` rebuilds it when the files change.

    The check runs on use, at most every `interval` seconds, so an idle proxy reads nothing
    and a busy one pays a monotonic-clock comparison per request. Inside an event loop it runs
    in a thread (one at a time) and the request goes on with the context in force; a new one
    is used from the next request after it is built. A half-rotated pair (new certificate, old
    key) fails to load and the previous context stays until the next check.
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
        self._checking = threading.Event()  # set while a background check runs
        self._swap = threading.Lock()

    def get(self) -> ssl.SSLContext:
        if self.files and self.clock() >= self._next_check:
            if _in_event_loop():
                self._next_check = self.clock() + self.interval
                self._check_in_background()
            else:
                self.refresh()
        return self._context

    def _check_in_background(self) -> None:
        if self._checking.is_set():
            return  # the last check has not returned (a hung mount): never a second thread
        self._checking.set()

        def check() -> None:
            try:
                self.refresh()
            finally:
                self._checking.clear()

        threading.Thread(target=check, name="tls-files", daemon=True).start()

    def refresh(self) -> bool:
        """Re-read the files; rebuild the context if their contents changed. True if rebuilt."""
        self._next_check = self.clock() + self.interval
        digest = _digest(self.files)
        if digest is None or digest == self._digest:
            return False
        try:
            context = build_context(self.config)
        except (OSError, ssl.SSLError, PemError) as exc:
            log.warning(
                "TLS files changed but cannot be loaded; keeping the previous ones",
                extra={"error": type(exc).__name__, "detail": _detail(exc)},
            )
            return False
        with self._swap:  # the reloader (on the loop) and a background check may both get here
            if digest == self._digest:
                return False
            self._context, self._digest = context, digest
            self.rebuilds += 1
        log.info("TLS files changed; new connections use them", extra={"rebuilds": self.rebuilds})
        return True


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _detail(exc: Exception) -> str | None:
    # OpenSSL's reason code, or which file is half-written; neither quotes the files.
    return str(exc) if isinstance(exc, PemError) else getattr(exc, "reason", None)
