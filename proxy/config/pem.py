"""Splitting a PEM file into its blocks, strictly: the file is whole or it is refused.

Every PEM the proxy reads (JWT signing keys, the `upstream.tls` CA bundle, client certificate
and key) goes through `split_pem` first. PEM libraries keep the complete blocks and skip what
follows, so a half-written bundle (key 2, then the first half of key 1) would load as a shorter
bundle and silently drop a key. Here any non-whitespace text outside complete blocks, a BEGIN
without its END, or an END whose label differs from its BEGIN is a `PemError`.

What is inside a block is left to the consumer (cryptography, OpenSSL). Messages give line
numbers and never quote the file: it may hold key material.
"""

from __future__ import annotations

import re

from proxy.config.reload import InvalidSecret

# RFC 7468 labels: printable characters without "-", single spaces or hyphens in between.
_LABEL = r"[\x21-\x2c\x2e-\x7e]+(?:[ -][\x21-\x2c\x2e-\x7e]+)*"
_BEGIN = re.compile(rf"-----BEGIN ({_LABEL})-----")
_END = re.compile(rf"-----END ({_LABEL})-----")


class PemError(InvalidSecret):
    """A PEM file is not made of complete blocks only; the message never quotes the file.

    An `InvalidSecret`, so a reload pass counts it `error` and keeps the value in force."""


def split_pem(text: str) -> list[str]:
    """The complete PEM blocks of `text`, in order, each ending in one newline.

    Whitespace between blocks is ignored; anything else outside a block raises PemError, as
    does a BEGIN without END (a truncated file) or an END with another label.
    """
    if _BEGIN.search(text) is None:
        raise PemError("holds no PEM block (expected -----BEGIN ...-----)")
    blocks: list[str] = []
    block: list[str] = []
    label, opened = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip()
        if not block:
            if not line:
                continue
            begin = _BEGIN.fullmatch(line)
            if begin is None:
                raise PemError(_outside(number, blocks))
            block, label, opened = [line], begin.group(1), number
            continue
        block.append(line)
        if not line.startswith("-----"):
            continue  # the body: base64 (and RFC 1421 headers), checked by the consumer
        end = _END.fullmatch(line)
        if end is None:
            raise PemError(
                f"has a malformed or unexpected PEM boundary on line {number} "
                f"(the block that begins on line {opened} is not closed)"
            )
        if end.group(1) != label:
            raise PemError(
                f"has a block whose BEGIN (line {opened}) and END (line {number}) labels differ"
            )
        blocks.append("\n".join(block) + "\n")
        block = []
    if block:
        raise PemError(
            f"has a PEM block that begins on line {opened} and never ends "
            "(a truncated or half-written file?)"
        )
    return blocks


def _outside(number: int, blocks: list[str]) -> str:
    where = "after a complete PEM block" if blocks else "before the first PEM block"
    return f"has text {where}, on line {number} (a half-written file?)"


def split_pem_bytes(data: bytes) -> list[str]:
    """`split_pem` for a file's bytes: PEM is ASCII text."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise PemError("is not PEM text (it holds bytes that are not ASCII)") from None
    return split_pem(text)
