"""`gini-auth-proxy rotate-store-key`: re-encrypt every stored credential with the current key.

Safe while replicas serve: rows are re-sealed one at a time by compare-and-swap (see
`stores.keyring`), so a credential a replica writes meanwhile is never overwritten, and no row
is created or deleted. The summary is printed on stdout; log records go to stderr as JSON.
"""

from __future__ import annotations

import asyncio
import sys
import time

from prometheus_client import CollectorRegistry

from proxy.config import Config, ConfigError
from proxy.errors import StartupError, StoreUnavailable
from proxy.log import Redactor, configure_logging
from proxy.metrics.families import audit_counters
from proxy.telemetry.audit import AuditLog
from proxy.vending.stores import StoreOpenError, make_store
from proxy.vending.stores.keyring import RotationReport, rotate


def _audit(config: Config) -> AuditLog | None:
    """The audit log, open; with `audit.required` a log that cannot be written stops the
    rotation before any row is touched."""
    if config.audit is None:
        return None
    audit = AuditLog(config.audit, *audit_counters(CollectorRegistry()))
    audit.open()
    if config.audit.required and not audit.ready():
        audit.close()
        raise StartupError("the audit log cannot be written and audit.required is true")
    return audit


def rotate_store_key(config: Config) -> None:
    """Re-encrypt every row of `config.store`; raises ConfigError or StartupError (see cli)."""
    if config.store is None:
        raise ConfigError(["store: no credential store is configured"])
    configure_logging(config.logging.level, Redactor(config.secrets()), stream=sys.stderr)
    store = make_store(config.store)
    audit = _audit(config)
    started = time.perf_counter()

    async def main() -> RotationReport:
        await store.open()
        try:
            return await rotate(store)
        finally:
            await store.close()

    try:
        report = asyncio.run(main())
    except (StoreOpenError, StoreUnavailable) as exc:
        if audit is not None:
            audit.unrequested("store.rotate", None, "error", time.perf_counter() - started)
            audit.close()
        raise StartupError(str(exc)) from None
    if audit is not None:
        result = "error" if report.undecryptable else "ok"
        audit.unrequested("store.rotate", None, result, time.perf_counter() - started)
        audit.close()
    print(
        f"re-encrypted {report.reencrypted} stored credentials with store.encryption_key;"
        f" {report.already_current} were already current"
    )
    if report.undecryptable:
        raise StartupError(
            f"{report.undecryptable} stored credentials cannot be decrypted by"
            " store.encryption_key or any of store.previous_encryption_keys; they were left"
            " untouched. Add the key they were encrypted with to previous_encryption_keys and"
            " run rotate-store-key again; keep every old key until this reports none."
        )
