"""Reading Gini's `Retry-After` (RFC 9110 §10.2.3): delta-seconds or an HTTP-date.

Pure: the wall clock is passed in. Anything else (a negative number, a fraction, junk) is not
a `Retry-After` at all, so it pauses nothing; a huge number is only large, and capped by the
caller (`max_pause_seconds`).
"""

from __future__ import annotations

from datetime import UTC
from email.utils import parsedate_to_datetime

_LONGEST = 10**9  # seconds; more digits than this say "a very long time", nothing more


def retry_after_seconds(value: str, now: float) -> float | None:
    """Seconds from `now` (Unix time) that `value` asks to wait (0 for a date in the past), or
    None when `value` is neither form."""
    text = value.strip()
    if text.isascii() and text.isdigit():
        # Compared by length first: int() of thousands of digits is slow, and refused by Python.
        return float(_LONGEST if len(text) > 9 else int(text))
    if not text or not text[0].isalpha():
        return None  # "-1", "1.5": no HTTP-date starts with a digit or a sign
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # "-0000": an HTTP-date is always GMT
    return max(0.0, when.timestamp() - now)
