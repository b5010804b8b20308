"""Memory per 10,000 cached tokens, remembered identities and signed JWTs (tracemalloc).

The proxy's own structures, filled as a busy proxy fills them: a token cache keyed by derived
identifiers (64 hex characters) holding 36-character tokens, the identifier memo holding
36-character user ids, and jwt mode's cache of signed ES256 JWTs. Only what the structure keeps
alive is counted, so the figure scales linearly to `tokens.max_cached`, to the memo's 65,536
entries and to the signer's cache size. Beside it, the growth of the process's RSS while the
same structure is built again without tracemalloc, in a fresh process (memory freed earlier in
the same process would be reused without growing it; tokens and identities at ten times the
size): what the allocator really takes from the system, slack included.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import tracemalloc
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

from proxy.identity import IdentifierDeriver
from proxy.vending.tokens import Token, TokenCache

from .jwt_mode import bench_signer

ENTRIES = 10_000
_SCRIPTS = Path(__file__).resolve().parents[1]  # where `python -m benchlib...` runs
_KEY = b"bench-hmac-key-0123456789abcdef0123456789"


def _traced(build: Callable[[int], object]) -> float:
    """MiB that `build`'s result keeps alive."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build(ENTRIES)
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
    """MiB of RSS growth per ENTRIES while `build(entries)` is alive (run in a fresh process)."""
    build(16)  # imports, the event loop, the signing key: whatever one entry needs once
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


def _jwts(key: Path, entries: int) -> object:
    signer = bench_signer(key, entries)
    for n in range(entries):
        signer.header_for(f"{n:064x}")
    return signer


def _builders(jwt_key: Path) -> dict[str, tuple[Callable[[int], object], int]]:
    """Each structure's builder and the size its RSS is measured at."""
    return {
        "tokens": (_tokens, 10 * ENTRIES),
        "identities": (_identities, 10 * ENTRIES),
        "JWTs": (partial(_jwts, jwt_key), ENTRIES),  # 10,000 signatures take about a second
    }


def _rss_in_fresh_process(what: str, jwt_key: Path) -> float:
    argv = [sys.executable, "-m", "benchlib.footprint", what, str(jwt_key)]
    done = subprocess.run(  # noqa: S603 - our own interpreter and module
        argv, capture_output=True, text=True, check=True, cwd=_SCRIPTS, timeout=300
    )
    return float(done.stdout)


def measure(jwt_key: Path) -> dict[str, tuple[float, float]]:
    """Per 10,000 entries, (MiB traced, MiB of RSS growth), by structure."""
    return {
        what: (_traced(build), _rss_in_fresh_process(what, jwt_key))
        for what, (build, _) in _builders(jwt_key).items()
    }


if __name__ == "__main__":  # one RSS measurement: `python -m benchlib.footprint WHAT KEY`
    build, entries = _builders(Path(sys.argv[2]))[sys.argv[1]]
    print(_rss(build, entries))
