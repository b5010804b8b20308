"""Secret values and the sources they are read from (inline string, environment, file).

A `Secret` never shows its value in `repr`/`str`, so a config object can be logged or printed
in a traceback without leaking what it holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from proxy.config.files import read_regular


@dataclass(frozen=True, slots=True)
class Secret:
    """A secret string plus a description of where it came from (safe to show)."""

    value: str = field(repr=False)
    source: str = "inline"  # how it is shown: "inline", "env:NAME", "file:PATH" or "file:PATH#3"
    # Where a reload re-reads it: the file, and the line of a file of one key per line.
    path: Path | None = field(default=None, compare=False)
    line: int | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return f"Secret(source={self.source!r})"

    __str__ = __repr__

    def encode(self) -> bytes:
        """The secret as UTF-8 bytes (HMAC keys, passwords)."""
        return self.value.encode("utf-8")


class SecretSourceError(ValueError):
    """A secret source could not be read; the message names the source, never the value."""


def resolve_secret(spec: object, env: Mapping[str, str], base_dir: Path) -> Secret:
    """Read a secret given as a string, `{env: NAME}` or `{file: PATH}`.

    Surrounding whitespace is stripped: Kubernetes Secret files and `echo` often end in a
    newline that was never meant to be part of the key.
    """
    file: Path | None = None
    if isinstance(spec, str):
        value, source = spec, "inline"
    elif isinstance(spec, Mapping) and len(spec) == 1:
        ((kind, name),) = spec.items()
        if not isinstance(name, str) or not name:
            raise SecretSourceError(f"`{kind}` needs a non-empty string")
        if kind == "env":
            if name not in env:
                raise SecretSourceError(f"environment variable {name} is not set")
            value, source = env[name], f"env:{name}"
        elif kind == "file":
            path = file = Path(name) if Path(name).is_absolute() else base_dir / name
            try:
                value = read_regular(path).decode("utf-8")  # no FIFO, device, directory
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise SecretSourceError(f"cannot read file {path}: {reason}") from None
            source = f"file:{path}"
        else:
            raise SecretSourceError(f"unknown secret source `{kind}` (use env or file)")
    else:
        raise SecretSourceError("expected a string, {env: NAME} or {file: PATH}")
    value = value.strip()
    if not value:
        raise SecretSourceError(f"the secret from {source} is empty")
    return Secret(value, source, file)
