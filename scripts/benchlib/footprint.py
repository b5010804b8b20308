"""Memory per 10,000 cached tokens and per 10,000 remembered identities (tracemalloc).

The proxy's own structures, filled as a busy proxy fills them: a token cache keyed by derived
identifiers (64 hex characters) holding 36-character tokens, and the identifier memo holding
36-character user ids. Only what the structure keeps alive is counted, so the figure scales
linearly to `tokens.max_cached` and to the memo's 65,536 entries.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import uuid
from collections.abc import Callable

from proxy.identity import IdentifierDeriver
from proxy.vending.tokens import Token, TokenCache

ENTRIES = 10_000
_KEY = b"bench-hmac-key-0123456789abcdef0123456789"


def _traced(build: Callable[[], object]) -> float:
    """MiB that `build`'s result keeps alive."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    del kept
    return (after - before) / (1 << 20)


def _tokens() -> object:
    cache = TokenCache("derived", ENTRIES, refresh_before=60.0)
    derive = IdentifierDeriver(_KEY, max_entries=1)  # keys only; its memo holds one entry

    async def fill() -> None:
        for _ in range(ENTRIES):
            token = Token(str(uuid.uuid4()), cache.clock() + 3600.0)

            async def fetch(token: Token = token) -> Token:
                return token

            await cache.get(derive(str(uuid.uuid4())), fetch)

    asyncio.run(fill())
    assert len(cache) == ENTRIES
    return cache


def _identities() -> object:
    derive = IdentifierDeriver(_KEY)
    for _ in range(ENTRIES):
        derive(str(uuid.uuid4()))
    assert len(derive) == ENTRIES
    return derive


def measure() -> dict[str, float]:
    """MiB per 10,000 entries: {"tokens": ..., "identities": ...}."""
    return {"tokens": _traced(_tokens), "identities": _traced(_identities)}


if __name__ == "__main__":
    for what, mib in measure().items():
        print(f"{what}: {mib:.2f} MiB per {ENTRIES:,}")
