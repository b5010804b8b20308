"""`gini-auth-proxy rotate-store-key`: re-encrypt every stored credential with the current key.

Safe while replicas serve: rows are re-sealed one at a time by compare-and-swap (see
`stores.keyring`), so a credential a replica writes meanwhile is never overwritten, and no row
is created or deleted. The summary is printed on stdout; log records go to stderr as JSON.
"""

from __future__ import annotations

import asyncio
import sys

from proxy.cli import EXIT_CONFIG, EXIT_OK, EXIT_STARTUP
from proxy.config import Config
from proxy.errors import StoreUnavailable
from proxy.log import Redactor, configure_logging
from proxy.vending.stores import StoreOpenError, make_store
from proxy.vending.stores.keyring import RotationReport, rotate


def rotate_store_key(config: Config) -> int:
    """Run the rotation for `config.store`; returns the exit code (0, 2 or 3)."""
    if config.store is None:
        print("error: store: no credential store is configured", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.logging.level, Redactor(config.secrets()), stream=sys.stderr)
    store = make_store(config.store)

    async def main() -> RotationReport:
        await store.open()
        try:
            return await rotate(store)
        finally:
            await store.close()

    try:
        report = asyncio.run(main())
    except (StoreOpenError, StoreUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    print(
        f"re-encrypted {report.reencrypted} stored credentials with store.encryption_key;"
        f" {report.already_current} were already current"
    )
    if report.undecryptable:
        print(
            f"error: {report.undecryptable} stored credentials cannot be decrypted by"
            " store.encryption_key or any of store.previous_encryption_keys; they were left"
            " untouched. Add the key they were encrypted with to previous_encryption_keys and"
            " run rotate-store-key again; keep every old key until this reports none.",
            file=sys.stderr,
        )
        return EXIT_STARTUP
    return EXIT_OK
