"""Bounded body reading and decoding, shared by request and response relaying (no aiohttp web)."""

from __future__ import annotations

import zlib
from collections.abc import Callable

from aiohttp import StreamReader

SMALL_BODY = 64 * 1024
"""Bodies up to this size are read whole before relaying: one write instead of a chunk loop."""
STREAM_CHUNK = 256 * 1024
"""Chunk size for bodies relayed as streams, both directions."""


async def read_bounded(stream: StreamReader, limit: int) -> tuple[bytes, bool]:
    """Read until EOF or until more than `limit` bytes arrived.

    Returns the bytes read and whether that was the whole body. When it was not, the caller
    relays the returned prefix and then the rest of the stream unchanged.
    """
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await stream.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


def recode_json(
    body: bytes, encoding: str, limit: int, rewrite: Callable[[bytes], bytes]
) -> bytes | None:
    """Apply `rewrite` to a possibly compressed JSON body.

    Returns the rewritten *identity-encoded* body, or None when the body must be relayed as it
    is: nothing to rewrite, an encoding this proxy cannot undo, a corrupt stream, or more than
    `limit` bytes once decompressed (a zip bomb must not cost memory).
    """
    if encoding == "identity":
        rewritten = rewrite(body)
        return rewritten if rewritten is not body else None
    if encoding not in ("gzip", "x-gzip", "deflate"):
        return None
    decoder = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    try:
        plain = decoder.decompress(body, limit + 1)
    except zlib.error:
        return None
    if decoder.unconsumed_tail or len(plain) > limit or not decoder.eof:
        return None
    if decoder.unused_data:
        return None  # more gzip members (or trailing bytes) follow: relay it all unchanged
    rewritten = rewrite(plain)
    return rewritten if rewritten is not plain else None
