"""`logging.format: text`: one readable line per record, redacted like the JSON lines."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config import ConfigError, build_config
from proxy.log import REDACTED, Redactor, TextFormatter, configure_logging

SECRET = "s3cr3t-client-secret-value"


@pytest.fixture
def text_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("info", Redactor([SECRET]), stream, fmt="text")
    yield stream
    for handler in logging.getLogger().handlers[:]:
        logging.getLogger().removeHandler(handler)


def test_text_line_has_time_level_logger_message_and_fields(text_log: io.StringIO) -> None:
    logging.getLogger("proxy.test").warning("store call failed", extra={"address": "db:5432"})
    line = text_log.getvalue()
    assert line.endswith("\n")
    assert line.count("\n") == 1
    assert "Z warning proxy.test: store call failed address=db:5432" in line
    assert line[:4].isdigit()  # the timestamp leads
    assert not line.startswith("{")


def test_text_line_is_redacted(text_log: io.StringIO) -> None:
    log = logging.getLogger("proxy.test")
    log.info("secret is %s", SECRET, extra={"note": f"x {SECRET} password=hunter22"})
    line = text_log.getvalue()
    assert SECRET not in line
    assert "hunter22" not in line
    assert REDACTED in line


@given(st.text())
def test_a_text_record_is_always_one_line(message: str) -> None:
    formatter = TextFormatter(Redactor())
    record = logging.makeLogRecord({"msg": "%s", "args": (message,), "name": "x", "extra": message})
    record.__dict__["field"] = message
    line = formatter.format(record)
    assert "\n" not in line
    assert "\r" not in line


def test_logging_format_is_validated(tmp_path: Path) -> None:
    data = {
        "client": {"id": "x", "secret": "y"},
        "identity": {"hmac_key": "k" * 32},
        "logging": {"format": "xml"},
    }
    with pytest.raises(ConfigError) as caught:
        build_config(data, {}, tmp_path)
    assert caught.value.problems == ["logging.format: must be json or text, got 'xml'"]
    data["logging"] = {"format": "TEXT"}
    assert build_config(data, {}, tmp_path).logging.format == "text"
    del data["logging"]
    assert build_config(data, {}, tmp_path).logging.format == "json"
