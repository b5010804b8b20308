"""Memory per 10,000 cached tokens and per 10,000 remembered identities (tracemalloc).

The proxy's own structures, filled as a busy proxy fills them: a token cache keyed by derived
identifiers (64 hex characters) holding 36-character tokens, and the identifier memo holding
36-character user ids. Only what the structure keeps alive is counted, so the figure scales
linearly to `tokens.max_cached` and to the memo's 65,536 entries. Beside it, the growth of the
process's RSS while the same structures are built (without tracemalloc) at ten times the size:
what the allocator really takes from the system, slack included.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path

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


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def _rss(build: Callable[[int], object], entries: int) -> float:
    """MiB of RSS growth per ENTRIES while `build(entries)` is alive."""
    gc.collect()
    before = _rss_kib()
    kept = build(entries)
    grown = _rss_kib() - before
    del kept
    return grown / 1024 * ENTRIES / entries


def _tokens(entries: int = ENTRIES) -> object:
    cache = TokenCache("derived", entries, refresh_before=60.0)
    derive = IdentifierDeriver(_KEY, max_entries=1)  # keys only; its memo holds one entry

    async def fill() -> None:
        for _ in range(entries):
            token = Token(str(uuid.uuid4()), cache.clock() + 3600.0)

            async def fetch(token: Token = token) -> Token:
                return token

            await cache.get(derive(str(uuid.uuid4())), fetch)

    asyncio.run(fill())
    assert len(cache) == entries
    return cache


def _identities(entries: int = ENTRIES) -> object:
    derive = IdentifierDeriver(_KEY, max_entries=entries)
    for _ in range(entries):
        derive(str(uuid.uuid4()))
    assert len(derive) == entries
    return derive


def measure() -> dict[str, tuple[float, float]]:
    """Per 10,000 entries, (MiB traced, MiB of RSS growth): {"tokens": ..., "identities": ...}."""
    return {
        what: (_traced(build), _rss(build, 10 * ENTRIES))
        for what, build in (("tokens", _tokens), ("identities", _identities))
    }


if __name__ == "__main__":
    for what, (traced, rss) in measure().items():
        print(f"{what}: {traced:.2f} MiB traced, {rss:.2f} MiB of RSS per {ENTRIES:,}")
