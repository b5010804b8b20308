"""Deterministic response bodies: the download pattern, a placeholder image, link-heavy JSON."""

from __future__ import annotations

import functools
import hashlib
import json
import struct
import zlib
from collections.abc import Iterator

BLOCK_SIZE = 64 * 1024
_SEED = b"gini-auth-proxy sandbox download v1"


def _make_block() -> bytes:
    # SHA-256 in counter mode: incompressible-looking bytes, identical on every run.
    digests = (
        hashlib.sha256(_SEED + i.to_bytes(4, "big")).digest() for i in range(BLOCK_SIZE // 32)
    )
    return b"".join(digests)


DOWNLOAD_BLOCK = _make_block()


def download_chunks(n: int) -> Iterator[bytes]:
    """The first ``n`` bytes of the endlessly repeated block, one block (or less) at a time."""
    full, rest = divmod(n, BLOCK_SIZE)
    for _ in range(full):
        yield DOWNLOAD_BLOCK
    if rest:
        yield DOWNLOAD_BLOCK[:rest]


@functools.lru_cache(maxsize=64)
def expected_download_sha256(n: int) -> str:
    """Hex SHA-256 of what ``GET /_sandbox/download?bytes=n`` sends."""
    if n < 0:
        raise ValueError("n must be >= 0")
    hasher = hashlib.sha256()
    for chunk in download_chunks(n):
        hasher.update(chunk)
    return hasher.hexdigest()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data)
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


@functools.cache
def placeholder_png() -> bytes:
    """A valid 1x1 grey PNG, served for page images, processed files and provider icons."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)  # 1x1, 8-bit greyscale
    pixels = zlib.compress(b"\x00\x80")  # filter byte 0, one grey pixel
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", pixels)
        + _png_chunk(b"IEND", b"")
    )


def links_json(pay_api_url: str, size: int) -> bytes:
    """A JSON document of at least ``size`` bytes (about 250 bytes more at most) full of
    absolute Pay API links, shaped like a document list."""
    parts: list[bytes] = []
    total = len(b'{"documents":[]}')
    index = 0
    while total < size:
        doc_url = f"{pay_api_url}/documents/{index:012d}"
        item = {
            "id": f"{index:012d}",
            "_links": {
                "document": doc_url,
                "extractions": f"{doc_url}/extractions",
                "processed": f"{doc_url}/processed",
            },
        }
        encoded = json.dumps(item, separators=(",", ":")).encode()
        parts.append(encoded)
        total += len(encoded) + (1 if index else 0)
        index += 1
    return b'{"documents":[' + b",".join(parts) + b"]}"
