"""`inbound_auth`: the header and the key file, read by the same rules at startup and on every
reload (`split_keys` and `keys_problem` are what `proxy.reloading` applies to a changed file).

A line is `name:key` or a bare key. It names its caller when the part before its first `:` is
a valid name (`CALLER_NAME`); the key is then the rest, which may hold `:` itself. A line
whose first `:` follows something that is not a name is a bare key, whole. A line that reads
as `name:` plus a key too short is refused rather than guessed at: it may be an old bare key
holding `:` that now reads as named, or a name whose key was left out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from proxy.config.model import MIN_INBOUND_KEY_BYTES, InboundAuthConfig, InboundKey
from proxy.config.reader import Reader
from proxy.config.secret import Secret

HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
CALLER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""A caller's name: shown in the access and audit logs as it is, so nothing that needs
escaping, and short."""


def _named(line: str, source: str, path: Path | None, number: int) -> InboundKey:
    name, colon, rest = line.partition(":")
    if colon and CALLER_NAME.fullmatch(name):
        return InboundKey(rest.strip(), source, path, number, name)
    return InboundKey(line, source, path, number)


def split_keys(blob: Secret) -> tuple[InboundKey, ...]:
    """One key per line; blank lines and `#` comments are skipped. Each key keeps the file it
    came from and its line there, so a problem names `file:PATH#3`, never the key, and the
    caller name of a `name:key` line."""
    return tuple(
        _named(line.strip(), f"{blob.source}#{number}", blob.path, number)
        for number, line in enumerate(blob.value.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    )


def keys_problem(keys: Sequence[InboundKey]) -> str | None:
    """What is wrong with a key list (none, keys that are too short, or one key under two
    names), or None."""
    short = [
        key.source + (" (read as `name:key`)" if key.caller is not None else "")
        for key in keys
        if len(key.encode()) < MIN_INBOUND_KEY_BYTES
    ]
    if keys and not short:
        seen: dict[str, str | None] = {}
        for key in keys:
            if seen.setdefault(key.value, key.caller) != key.caller:
                return f"one key is given under two caller names ({key.source})"
        return None
    return (
        f"needs one key per line (`name:key` or a bare key), each key at least "
        f"{MIN_INBOUND_KEY_BYTES} bytes" + (f" (too short: {', '.join(short)})" if short else "")
    )


def reread_keys(path: Path, text: str) -> tuple[InboundKey, ...]:
    """The key file at `path`, changed to `text`, read as at startup; ValueError (saying what
    is wrong, never quoting a key) when it would be refused there."""
    keys = split_keys(Secret(text, f"file:{path}", path))
    problem = keys_problem(keys)
    if problem is not None:
        raise ValueError(problem)
    return keys


def parse_inbound_auth(r: Reader, data: Mapping[str, Any]) -> InboundAuthConfig | None:
    d = r.section(data, "inbound_auth", "inbound_auth", ("header", "keys"))
    if d is None:
        return None
    header = r.string(d, "header", "inbound_auth.header", "X-Proxy-Key")
    if not HEADER_NAME.match(header):
        r.problem("inbound_auth.header", f"{header!r} is not a valid HTTP header name")
    blob = r.secret(d, "keys", "inbound_auth.keys")
    keys = split_keys(blob)
    problem = keys_problem(keys) if blob.source != "invalid" else None
    if problem is not None:
        r.problem("inbound_auth.keys", problem)
    return InboundAuthConfig(header=header, keys=keys)
