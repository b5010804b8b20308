"""JSON logs, one object per line, with a redaction pass over every finished line.

Redaction runs on the formatted line, so a secret cannot slip out through an exception text,
an `extra` field or a third-party logger. Known secret values (from the config) are replaced
exactly; credentials in `Authorization`-like shapes and `access_token`/`password` fields are
replaced by pattern, which covers tokens the proxy never knew in advance.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

REDACTED = "[REDACTED]"
_PATTERNS = re.compile(
    r"(?i)(\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{6,}"
    r"|((?:access_token|refresh_token|password|client_secret|secret)\W{1,4})[^\s\"'&,}\\]{2,}"
)
# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class Redactor:
    """Replaces known secret values and credential-shaped text in a string."""

    def __init__(self, secrets: Iterable[str] = ()):
        self._secrets: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Register more secret values (shorter than 4 characters would redact noise)."""
        merged = set(self._secrets) | {s for s in secrets if len(s) >= 4}
        self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _PATTERNS.sub(lambda m: (m.group(1) or m.group(2)) + REDACTED, text)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: timestamp, level, logger, message, then extras."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.converter = time.gmtime
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self.redactor(json.dumps(entry, default=str, ensure_ascii=False))


def configure_logging(level: str, redactor: Redactor, stream: IO[str] | None = None) -> None:
    """Send every logger's records to `stream` (stdout) as redacted JSON lines."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonFormatter(redactor))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's own access log would duplicate ours, without route templates or redaction.
    logging.getLogger("aiohttp.access").disabled = True
