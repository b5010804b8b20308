"""JSON logs, one object per line (or `text` lines for a terminal), with every value redacted
before it is serialised.

Redaction covers every field of every record (message, exception text, `extra` fields, any
third-party logger), and runs on the values before JSON escaping, so it can never cut through
an escape and break a line. Known secret values (from the config, and values read on reload)
are replaced exactly; credentials in `Authorization`-like shapes, `access_token`/`password`
text and fields named like credentials are replaced by pattern, which covers tokens the proxy
never knew in advance. A line that would still spell a secret once escaped is withheld.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar, Token
from typing import IO, Any

REDACTED = "[REDACTED]"
WITHHELD = "the line spelled a registered secret"
_PATTERNS = re.compile(
    r"(?i)(\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{6,}"
    # `key=value`, `key: value`, `"key": "value"`, also with the quotes escaped (`\"key\":\"`)
    # as they are inside a JSON log line. A `:` or `=` is required: "password field" is prose.
    r"|((?:access_token|refresh_token|password|client_secret|secret)"
    r"""(?:\\?["'])?\s*[:=]\s*(?:\\?["'])?)[^\s\"'&,}\\]{2,}"""
)
# Structured fields (`extra=` dicts) whose name says they hold a credential, as in _PATTERNS.
_CREDENTIAL_NAMES = ("access_token", "refresh_token", "password", "secret")
_PATTERN_WORDS = ("bearer", "basic", "token", "password", "secret")
# What the current request's log lines carry and hide: its request id (added to every line
# logged in its context, including single-flight fetch tasks it started) and the values only
# it knows (its raw user id, the token or password it handles).
_scope: ContextVar[tuple[str | None, tuple[str, ...]]] = ContextVar(
    "gini_proxy_log_scope", default=(None, ())
)
# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
# Fields the proxy fills itself: never free text, so never searched for request values (a user
# id "2026" must not turn the timestamp into "[REDACTED]-11-28").
_STRUCTURED = frozenset(
    {"timestamp", "level", "logger", "request_id", "gini_request_id", "method", "route"}
)


def request_scope(
    request_id: str, values: tuple[str, ...] = ()
) -> Token[tuple[str | None, tuple[str, ...]]]:
    """Open a request's log scope hiding `values`; pass the result to `end_request_scope`."""
    return _scope.set((request_id, values if all(values) else tuple(v for v in values if v)))


def end_request_scope(token: Token[tuple[str | None, tuple[str, ...]]]) -> None:
    _scope.reset(token)


def hide(*values: str) -> None:
    """Redact `values` from every line logged from here on in this request or task."""
    request_id, hidden = _scope.get()
    _scope.set((request_id, hidden + values))


def current_request_id() -> str | None:
    """The id of the request this code runs for, if any (sent along on Gini calls)."""
    return _scope.get()[0]


def _hide_request_values(text: str, values: tuple[str, ...]) -> str:
    for value in values:
        if value in text:
            # Whole tokens only for short values: "42" must not eat "1042".
            if len(value) < 8:
                text = re.sub(rf"(?<![\w]){re.escape(value)}(?![\w])", REDACTED, text)
            else:
                text = text.replace(value, REDACTED)
    return text


class Timestamps:
    """RFC 3339 UTC times with milliseconds for hand-built lines (the access and audit logs):
    the date and time are formatted once a second, not once a line."""

    __slots__ = ("_second", "_stamp")

    def __init__(self) -> None:
        self._second = -1
        self._stamp = ""

    def at(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"


class Redactor:
    """Replaces known secret values and credential-shaped text in a string."""

    def __init__(self, secrets: Iterable[str] = ()):
        self._secrets: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Register more secret values (shorter than 4 characters would redact noise)."""
        wanted = {s for s in secrets if len(s) >= 4}
        merged = set(self._secrets) | wanted
        self._secrets = tuple(sorted(merged, key=len, reverse=True))

    def spelled_in(self, text: str) -> bool:
        """Does `text` contain a registered secret verbatim?"""
        return any(secret in text for secret in self._secrets)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        # Every pattern match contains one of these words; most lines contain none, and the
        # pattern itself is slow (no literal prefix to scan for). casefold, as `(?i)` folds.
        folded = text.casefold()
        if not any(word in folded for word in _PATTERN_WORDS):
            return text
        return _PATTERNS.sub(lambda m: (m.group(1) or m.group(2)) + REDACTED, text)


def _is_credential_name(key: str) -> bool:
    folded = key.casefold()
    return any(name in folded for name in _CREDENTIAL_NAMES)


def _redacted(value: object, redact: Callable[[str], str]) -> object:
    """`value` with every string in it redacted; anything not JSON-native becomes its str()."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {
            redact(str(key)): REDACTED
            if item is not None and _is_credential_name(str(key))
            else _redacted(item, redact)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redacted(item, redact) for item in value]
    return redact(str(value))


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: timestamp, level, logger, message, then extras."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.converter = time.gmtime
        self.redactor = redactor

    def entry(self, record: logging.LogRecord) -> dict[str, Any]:
        """The record's fields, every value redacted."""
        request_id, hidden = _scope.get()
        entry: dict[str, Any] = {
            "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # Redaction works on the values, before they are escaped: replacing text inside the
        # finished line could cut through an escape such as `\u001b` and break the JSON.
        redact = self.redactor

        def clean(text: str) -> str:
            text = redact(text)
            return _hide_request_values(text, hidden) if hidden else text

        for key, value in entry.items():
            if key in _STRUCTURED and isinstance(value, str):
                entry[key] = redact(value)
            else:
                entry[key] = _redacted(value, clean)
        return entry

    def render(self, entry: dict[str, Any]) -> str:
        return json.dumps(entry, ensure_ascii=False)

    def format(self, record: logging.LogRecord) -> str:
        entry = self.entry(record)
        line = self.render(entry)
        if self.redactor.spelled_in(line):
            # Only a secret holding `"`, `\` or a control character can reappear through JSON
            # escaping or across fields: withhold the line's content rather than emit it.
            line = self.render(
                {key: entry[key] for key in ("timestamp", "level", "logger")}
                | {"message": REDACTED, "withheld": WITHHELD}
            )
        return line


class TextFormatter(JsonFormatter):
    """`logging.format: text`: one line for a human at a terminal, redacted the same way:
    `2026-12-06T23:30:00.123Z info  proxy.server: ready key=value ...`."""

    def render(self, entry: dict[str, Any]) -> str:
        head = f"{entry['timestamp']} {entry['level']:<7} {entry['logger']}: {entry['message']}"
        rest = {k: v for k, v in entry.items() if k not in _TEXT_HEAD}
        exception = rest.pop("exception", None)
        fields = "".join(f" {key}={_text_value(value)}" for key, value in rest.items())
        line = head + fields
        # Control characters from a caller must not forge a second log line.
        line = line.translate(_TEXT_CONTROLS)
        return f"{line}\n{exception}" if isinstance(exception, str) else line


_TEXT_HEAD = frozenset({"timestamp", "level", "logger", "message"})
_TEXT_CONTROLS = {code: f"\\x{code:02x}" for code in (*range(32), 127) if code != 9}


def _text_value(value: object) -> str:
    if isinstance(value, str) and value and not any(c in value for c in ' "='):
        return value
    return json.dumps(value, ensure_ascii=False)


_access_output: IO[str] | None = None


def access_stream() -> IO[str] | None:
    """Where access lines go: the configured output, or None (not configured, level > info)."""
    return _access_output


def configure_logging(
    level: str, redactor: Redactor, stream: IO[str] | None = None, fmt: str = "json"
) -> None:
    """Send every logger's records to `stream` (stdout) as redacted lines, JSON or `text`."""
    global _access_output  # noqa: PLW0603 - logging output is process-wide by nature
    output = stream if stream is not None else sys.stdout
    _access_output = output if logging.getLevelName(level.upper()) <= logging.INFO else None
    handler = logging.StreamHandler(output)
    handler.setFormatter(TextFormatter(redactor) if fmt == "text" else JsonFormatter(redactor))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's own access log would duplicate ours, without route templates or redaction.
    logging.getLogger("aiohttp.access").disabled = True
    # aiosqlite logs every statement with its parameters at debug level: identifiers, emails
    # and sealed passwords have no place in logs, even when an operator asks for debug.
    logging.getLogger("aiosqlite").setLevel(logging.INFO)


def register_secrets(values: Iterable[str]) -> None:
    """Redact `values` too from now on, in every JSON handler `configure_logging` installed
    (a reloaded secret is as secret as the one read at startup)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.formatter.redactor.add(values)
