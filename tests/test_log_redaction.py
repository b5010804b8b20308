"""The JSON log formatter and its redaction (proxy/log.py), without a server."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proxy.log import (
    REDACTED,
    WITHHELD,
    JsonFormatter,
    Redactor,
    configure_logging,
    end_request_scope,
    request_scope,
)

SECRET = "s3cr3t-Client-Value-9f8e7d"
HMAC_KEY = "0123456789abcdef0123456789abcdef-hmac"


class Capture:
    """A real logger writing through JsonFormatter into a string buffer."""

    def __init__(self, redactor: Redactor):
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter(redactor))
        # No digits in the name: a property test's secret of digits must not match it.
        letters = "".join(chr(ord("a") + int(digit)) for digit in str(id(self)))
        self.logger = logging.getLogger(f"test.log.{letters}")
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self.handler)

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def entries(self) -> list[dict[str, Any]]:
        # Log collectors split on "\n" only (str.splitlines would also split on U+0085 etc.).
        lines = self.text.split("\n")
        assert lines.pop() == ""  # every entry ends with a newline
        assert all(line.strip() for line in lines)
        return [json.loads(line) for line in lines]

    def close(self) -> None:
        self.logger.removeHandler(self.handler)


@pytest.fixture
def capture() -> Iterator[Capture]:
    cap = Capture(Redactor([SECRET, HMAC_KEY]))
    yield cap
    cap.close()


# --- JsonFormatter -------------------------------------------------------------------------


def test_one_json_object_per_line_with_the_standard_fields(capture: Capture) -> None:
    capture.logger.info("hello %s", "world")
    capture.logger.warning("second\nline")  # a newline in a message stays inside one line
    first, second = capture.entries()
    assert first["message"] == "hello world"
    assert first["level"] == "info"
    assert first["logger"] == capture.logger.name
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["timestamp"])
    assert list(first)[:4] == ["timestamp", "level", "logger", "message"]
    assert second["message"] == "second\nline"
    assert second["level"] == "warning"
    assert capture.text.count("\n") == 2


@pytest.mark.parametrize("values", [("alice@example.org",), ("", "alice@example.org", "")])
def test_a_request_scope_hides_its_values_and_skips_empty_ones(
    capture: Capture, values: tuple[str, ...]
) -> None:
    """An empty identity header hides nothing (hiding "" would garble every line)."""
    token = request_scope("req-7", values)
    try:
        capture.logger.warning("lookup for alice@example.org failed")
    finally:
        end_request_scope(token)
    capture.logger.warning("after alice@example.org")
    inside, after = capture.entries()
    assert inside["message"] == f"lookup for {REDACTED} failed"
    assert inside["request_id"] == "req-7"
    assert after["message"] == "after alice@example.org"


def test_timestamp_is_utc(capture: Capture) -> None:
    record = logging.makeLogRecord({"msg": "x", "levelname": "INFO", "name": "t"})
    record.created = 0.25
    record.msecs = 250.0
    entry = json.loads(JsonFormatter(Redactor()).format(record))
    assert entry["timestamp"] == "1970-01-01T00:00:00.250Z"


def test_extras_are_fields(capture: Capture) -> None:
    capture.logger.info(
        "request",
        extra={"request_id": "r-1", "status": 200, "duration_ms": 1.5, "route": None},
    )
    (entry,) = capture.entries()
    assert entry["request_id"] == "r-1"
    assert entry["status"] == 200
    assert entry["duration_ms"] == 1.5
    assert entry["route"] is None
    for standard in ("args", "msg", "levelno", "pathname", "exc_info", "thread"):
        assert standard not in entry


def test_unserialisable_extras_are_written_as_text(capture: Capture) -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    capture.logger.info("x", extra={"thing": Thing()})
    (entry,) = capture.entries()
    assert entry["thing"] == "a thing"


def test_exceptions_are_one_field(capture: Capture) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        capture.logger.exception("failed")
    (entry,) = capture.entries()
    assert entry["level"] == "error"
    assert "Traceback" in entry["exception"]
    assert "ValueError: boom" in entry["exception"]


def test_unicode_is_kept(capture: Capture) -> None:
    capture.logger.info("Müller 用户")
    assert "Müller 用户" in capture.text
    assert capture.entries()[0]["message"] == "Müller 用户"


# --- Redactor ------------------------------------------------------------------------------


def test_registered_secrets_are_replaced(capture: Capture) -> None:
    capture.logger.info("client secret is %s and key %s", SECRET, HMAC_KEY)
    assert SECRET not in capture.text
    assert HMAC_KEY not in capture.text
    assert capture.entries()[0]["message"] == f"client secret is {REDACTED} and key {REDACTED}"


def test_secrets_in_extras_are_replaced(capture: Capture) -> None:
    capture.logger.info(
        "x",
        extra={
            "detail": f"used {SECRET}",
            "nested": {"list": [SECRET], "k": HMAC_KEY},
            "headers": {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig"},
        },
    )
    assert SECRET not in capture.text
    assert HMAC_KEY not in capture.text
    assert "eyJhbGciOiJIUzI1NiJ9" not in capture.text
    (entry,) = capture.entries()
    assert entry["detail"] == f"used {REDACTED}"
    assert entry["nested"] == {"list": [REDACTED], "k": REDACTED}


def test_secrets_in_tracebacks_are_replaced(capture: Capture) -> None:
    try:
        raise RuntimeError(f"login failed for secret {SECRET} with Bearer abcdef123456")
    except RuntimeError:
        capture.logger.exception("upstream error")
    assert SECRET not in capture.text
    assert "abcdef123456" not in capture.text
    (entry,) = capture.entries()
    assert REDACTED in entry["exception"]
    assert "RuntimeError" in entry["exception"]


def test_secrets_in_chained_exceptions_are_replaced(capture: Capture) -> None:
    try:
        try:
            raise KeyError(SECRET)
        except KeyError as inner:
            raise ValueError("wrapped") from inner
    except ValueError:
        capture.logger.error("failed", exc_info=True)
    assert SECRET not in capture.text


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        ("Authorization: Bearer eyJhbGciOi.JIUzI1NiJ9-abc_def", "eyJhbGciOi"),
        ("authorization: bearer abcdefghijkl", "abcdefghijkl"),
        ("Authorization: Basic dGVzdDpzZWNyZXQ=", "dGVzdDpzZWNyZXQ"),
        ("BASIC dGVzdDpzZWNyZXQ=", "dGVzdDpzZWNyZXQ"),
        ('{"access_token":"tok-1234567890"}', "tok-1234567890"),
        ('{"access_token": "tok-1234567890", "expires_in": 300}', "tok-1234567890"),
        ("access_token=tok-1234567890&token_type=bearer", "tok-1234567890"),
        ('{"refresh_token":"ref-0987654321"}', "ref-0987654321"),
        ("grant_type=password&username=u@x.com&password=hunter2hunter2", "hunter2hunter2"),
        ('{"email": "u@x.com", "password": "Pa55-word!"}', "Pa55-word"),
        ("client_secret=abcdef987654", "abcdef987654"),
    ],
)
def test_credential_shapes_are_redacted(text: str, leaked: str) -> None:
    redactor = Redactor()
    out = redactor(text)
    assert leaked not in out
    assert REDACTED in out


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        ('upstream answered {"access_token":"tok-1234567890","expires_in":60}', "tok-1234567890"),
        ('upstream answered {"access_token": "tok-1234567890"}', "tok-1234567890"),
        ('body {"password": "Pa55word99"}', "Pa55word99"),
        ("form access_token=tok-1234567890", "tok-1234567890"),
        ("header Bearer tok-1234567890", "tok-1234567890"),
    ],
)
def test_credential_shapes_inside_a_logged_message_are_redacted(
    capture: Capture, text: str, leaked: str
) -> None:
    # The redaction pass runs over the JSON line, where the quotes of a message are escaped.
    capture.logger.warning(text)
    capture.logger.warning("x", extra={"body": text})
    lines = 2
    if "{" in text:  # and the same document as a structured field
        capture.logger.warning("y", extra={"body": json.loads(text[text.index("{") :])})
        lines = 3
    assert leaked not in capture.text
    assert len(capture.entries()) == lines


def test_ordinary_text_is_left_alone() -> None:
    redactor = Redactor([SECRET])
    for text in (
        "GET /documents/123 200",
        "token_type bearer",
        "basic auth failed",
        '{"expires_in": 300, "token_type": "bearer"}',
        "the password field is required",
    ):
        assert redactor(text) == text


def test_short_secrets_are_not_registered() -> None:
    redactor = Redactor(["abc", ""])
    assert redactor("abc abcdef") == "abc abcdef"


def test_longer_secrets_win_over_their_substrings() -> None:
    redactor = Redactor(["abcd1234", "abcd1234-and-more"])
    assert redactor("x abcd1234-and-more y") == f"x {REDACTED} y"


def test_secrets_can_be_added_later(capture: Capture) -> None:
    redactor = Redactor()
    assert redactor(f"k={SECRET}") == f"k={SECRET}"
    redactor.add([SECRET])
    assert redactor(f"k={SECRET}") == f"k={REDACTED}"


def test_secrets_with_characters_json_escapes_are_redacted(capture: Capture) -> None:
    # An inbound key or client secret may hold `"` or `\`: in the JSON line they are escaped,
    # so the raw value never appears there verbatim.
    odd = 'pa"ss\\word-0123456789'
    redactor = Redactor([odd])
    cap = Capture(redactor)
    try:
        cap.logger.info("value %s", odd)
        cap.logger.info("x", extra={"v": odd})
        assert "0123456789" not in cap.text
        assert cap.entries()[0]["message"] == f"value {REDACTED}"
    finally:
        cap.close()


# The fixed text of every line: a secret that is part of it (`timestamp`) reveals nothing.
_FORMAT_TEXT = json.dumps(
    {"timestamp": "", "level": "info", "logger": "test.log.", "message": "", "field": ["", ""]}
) + json.dumps({"withheld": WITHHELD})
# Config secrets are stripped; `[` and `]` are left out so that no secret can be spelled by
# the redaction marker and the text around it.
_secret_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="[]"),  # type: ignore[arg-type]
    min_size=8,
    max_size=30,
).filter(lambda s: s.strip() == s and s not in REDACTED and s not in _FORMAT_TEXT)


def _all_strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _all_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _all_strings(item)


@pytest.mark.parametrize(
    ("secret", "text"),
    [
        ("001b-abcd", "escape \x1b-abcd"),  # the secret spells an escape's digits
        ("u001b-0000", "colour \x1b[0m u001b-0000"),
        ("001b\\u0000", "a \x1b\x00 c"),  # only the escaped line spells it
        ('pa"ss-0000', 'quoted pa"ss-0000 here'),
        ("0000000d", "carriage \r return"),
    ],
)
def test_redaction_never_cuts_through_a_json_escape(secret: str, text: str) -> None:
    cap = Capture(Redactor([secret]))
    try:
        cap.logger.info(text)
        cap.logger.info("x", extra={"field": text, "nested": {"k": [text]}})
        assert secret not in cap.text
        assert len(cap.entries()) == 2  # every line still parses
    finally:
        cap.close()


def test_structured_fields_named_like_credentials_are_redacted(capture: Capture) -> None:
    capture.logger.info("x", extra={"answer": {"Access_Token": "opaque", "client_secret": 7}})
    (entry,) = capture.entries()
    assert entry["answer"] == {"Access_Token": REDACTED, "client_secret": REDACTED}


@given(_secret_text, st.text(max_size=20), st.text(max_size=20))
@example(secret="001b\\u0000", before="\x1b", after="\x00")
@example(secret="001b-abcd", before="\x1b", after="")
def test_property_a_registered_secret_never_reaches_a_log_line(
    secret: str, before: str, after: str
) -> None:
    cap = Capture(Redactor([secret]))
    try:
        cap.logger.info(before + secret + after)
        cap.logger.info("x", extra={"field": [before, secret, after]})
        assert secret not in cap.text
        for entry in cap.entries():
            for text in _all_strings(entry):
                assert secret not in text
    finally:
        cap.close()


# --- configure_logging ---------------------------------------------------------------------


def test_configure_logging_routes_every_logger_through_the_redactor() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    access = logging.getLogger("aiohttp.access")
    saved_disabled = access.disabled
    stream = io.StringIO()
    try:
        configure_logging("warning", Redactor([SECRET]), stream)
        logging.getLogger("some.library").warning("leaked %s", SECRET)
        logging.getLogger("some.library").info("not shown")
        access.warning("aiohttp access line")
        lines = stream.getvalue().splitlines()
        assert len(lines) == 1
        entry = json.loads(lines[0])
        assert entry["message"] == f"leaked {REDACTED}"
        assert entry["logger"] == "some.library"
        assert root.level == logging.WARNING
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        access.disabled = saved_disabled
