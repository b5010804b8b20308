"""`inbound_auth`: the header and the key file, read by the same rules at startup and on every
reload (`split_keys` and `keys_problem` are what `proxy.reloading` applies to a changed file)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from proxy.config.model import MIN_INBOUND_KEY_BYTES, InboundAuthConfig
from proxy.config.reader import Reader
from proxy.config.secret import Secret

HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


def split_keys(blob: Secret) -> tuple[Secret, ...]:
    """One key per line; blank lines and `#` comments are skipped. Each key keeps the file it
    came from and its line there, so a problem names `file:PATH#3`, never the key."""
    return tuple(
        Secret(line.strip(), f"{blob.source}#{number}", blob.path, number)
        for number, line in enumerate(blob.value.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    )


def keys_problem(keys: Sequence[Secret]) -> str | None:
    """What is wrong with a key list (none, or keys that are too short), or None."""
    short = [key.source for key in keys if len(key.encode()) < MIN_INBOUND_KEY_BYTES]
    if keys and not short:
        return None
    return f"needs one key per line, each at least {MIN_INBOUND_KEY_BYTES} bytes" + (
        f" (too short: {', '.join(short)})" if short else ""
    )


def reread_keys(path: Path, text: str) -> tuple[Secret, ...]:
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
