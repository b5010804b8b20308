"""Streaming request-body digests: uploads of any size are hashed chunk by chunk, never held."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from aiohttp import BodyPartReader, StreamReader, web

CHUNK_SIZE = 64 * 1024


@dataclass(frozen=True)
class BodyDigest:
    """Size and SHA-256 of a body, plus the body itself when small enough and asked for."""

    size: int
    sha256: str
    kept: bytes | None = None  # the whole body if it fit in ``keep_up_to``
    filename: str | None = None  # multipart file name, if any


async def digest_stream(stream: StreamReader, *, keep_up_to: int = 0) -> BodyDigest:
    """Read ``stream`` to the end, hashing it; keep the bytes only if they fit ``keep_up_to``."""
    hasher = hashlib.sha256()
    size = 0
    kept: bytearray | None = bytearray() if keep_up_to > 0 else None
    async for chunk in stream.iter_chunked(CHUNK_SIZE):
        hasher.update(chunk)
        size += len(chunk)
        if kept is not None:
            if size > keep_up_to:
                kept = None  # too big to keep: stop buffering, keep hashing
            else:
                kept += chunk
    return BodyDigest(size, hasher.hexdigest(), bytes(kept) if kept is not None else None)


async def _digest_part(part: BodyPartReader) -> BodyDigest:
    hasher = hashlib.sha256()
    size = 0
    while chunk := await part.read_chunk(CHUNK_SIZE):
        hasher.update(chunk)
        size += len(chunk)
    return BodyDigest(size, hasher.hexdigest(), filename=part.filename)


async def digest_multipart_file(request: web.Request, field: str = "file") -> BodyDigest | None:
    """Hash the first multipart/form-data part named ``field``; None if there is none."""
    reader = await request.multipart()
    found: BodyDigest | None = None
    while (part := await reader.next()) is not None:
        if isinstance(part, BodyPartReader) and part.name == field and found is None:
            found = await _digest_part(part)
        else:
            await part.release()  # drain other fields without keeping them
    return found
