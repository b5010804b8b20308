"""Tests of caller-id validation and X-User-Identifier derivation (proxy/identity.py)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import InvalidUser, MissingUser
from proxy.identity import (
    MAX_USER_ID_BYTES,
    IdentifierDeriver,
    derive_identifier,
    validate_user_id,
)

KEY = b"k" * 32


def stdlib_hmac(key: bytes, user_id: str) -> str:
    return hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).hexdigest()


# Characters a valid id may hold: printable, not a control character, not a surrogate.
_ID_CHAR = st.characters(blacklist_categories=("Cc", "Cs"))
valid_ids = (
    st.text(_ID_CHAR, min_size=1, max_size=64)
    .map(str.strip)
    .filter(lambda s: 0 < len(s.encode("utf-8")) <= MAX_USER_ID_BYTES)
)


# --- validate_user_id ----------------------------------------------------------------------


def test_missing_header_is_missing_user() -> None:
    with pytest.raises(MissingUser):
        validate_user_id(None)


@pytest.mark.parametrize(
    "user_id",
    ["alice", "alice@example.com", "42", "Jürgen Müller", "用户-7", "a b", "x" * 256],
)
def test_ordinary_ids_are_returned_unchanged(user_id: str) -> None:
    assert validate_user_id(user_id) == user_id


def test_empty_id_is_invalid() -> None:
    with pytest.raises(InvalidUser):
        validate_user_id("")


def test_256_bytes_is_the_limit() -> None:
    assert validate_user_id("a" * 256) == "a" * 256
    with pytest.raises(InvalidUser):
        validate_user_id("a" * 257)


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    two_byte = "é"  # 2 bytes in UTF-8
    assert validate_user_id(two_byte * 128) == two_byte * 128  # 256 bytes, 128 chars
    with pytest.raises(InvalidUser):
        validate_user_id(two_byte * 128 + "a")  # 257 bytes, 129 chars
    three_byte = "€"
    with pytest.raises(InvalidUser):
        validate_user_id(three_byte * 86)  # 258 bytes, only 86 characters
    assert validate_user_id(three_byte * 85 + "a") == three_byte * 85 + "a"  # 256 bytes
    four_byte = "😀"
    assert validate_user_id(four_byte * 64) == four_byte * 64  # 256 bytes
    with pytest.raises(InvalidUser):
        validate_user_id(four_byte * 64 + "a")


@pytest.mark.parametrize(
    "char",
    ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f", "\x7f", "\x80", "\x85", "\x9f"],
)
def test_control_characters_are_invalid_anywhere(char: str) -> None:
    for user_id in (f"{char}alice", f"al{char}ice", f"alice{char}", char):
        with pytest.raises(InvalidUser):
            validate_user_id(user_id)


@pytest.mark.parametrize("surrogate", [chr(0xD800), chr(0xDC80), chr(0xDFFF)])
def test_lone_surrogates_are_invalid(surrogate: str) -> None:
    # aiohttp turns header bytes that are not UTF-8 into lone surrogates.
    with pytest.raises(InvalidUser):
        validate_user_id(f"alice{surrogate}")


def test_surrounding_whitespace_is_invalid() -> None:
    # Not in the contract's list, but what the code does: " alice" and "alice" would otherwise
    # become two different Gini users for what a human reads as one id.
    for user_id in (" alice", "alice ", "\u00a0alice", " "):
        with pytest.raises(InvalidUser):
            validate_user_id(user_id)


def test_errors_carry_the_contract_codes_and_no_user_id() -> None:
    with pytest.raises(InvalidUser) as caught:
        validate_user_id("secret-user\x00")
    assert caught.value.code == "invalid_user"
    assert caught.value.status == 400
    assert "secret-user" not in caught.value.message
    with pytest.raises(MissingUser) as missing:
        validate_user_id(None)
    assert missing.value.code == "missing_user"
    assert missing.value.status == 400


@given(valid_ids)
def test_property_valid_ids_pass_unchanged(user_id: str) -> None:
    assert validate_user_id(user_id) == user_id


@given(
    st.text(_ID_CHAR, max_size=20),
    st.characters(min_codepoint=0, max_codepoint=0x9F).filter(lambda c: c < "\x20" or c >= "\x7f"),
    st.text(_ID_CHAR, max_size=20),
)
def test_property_any_control_character_is_refused(before: str, control: str, after: str) -> None:
    with pytest.raises(InvalidUser):
        validate_user_id(before + control + after)


@given(st.text(_ID_CHAR, min_size=1, max_size=400).map(str.strip))
def test_property_length_limit_is_in_utf8_bytes(user_id: str) -> None:
    size = len(user_id.encode("utf-8"))
    if 0 < size <= MAX_USER_ID_BYTES:
        assert validate_user_id(user_id) == user_id
    else:
        with pytest.raises(InvalidUser):
            validate_user_id(user_id)


# --- derive_identifier and IdentifierDeriver ------------------------------------------------


def test_identifier_is_lowercase_hex_hmac_sha256() -> None:
    value = derive_identifier(KEY, "alice")
    assert value == stdlib_hmac(KEY, "alice")
    assert len(value) == 64
    assert value == value.lower()
    assert value != hashlib.sha256(b"alice").hexdigest()  # keyed, not a plain hash


def test_identifier_hashes_utf8_bytes() -> None:
    assert (
        derive_identifier(KEY, "Jürgen")
        == hmac.new(KEY, "Jürgen".encode(), hashlib.sha256).hexdigest()
    )
    assert (
        derive_identifier(KEY, "Jürgen")
        != hmac.new(KEY, "Jürgen".encode("latin-1"), hashlib.sha256).hexdigest()
    )


def test_identifier_depends_on_the_key() -> None:
    assert derive_identifier(b"a" * 32, "alice") != derive_identifier(b"b" * 32, "alice")


def test_deriver_returns_the_derived_identifier_and_remembers_it() -> None:
    deriver = IdentifierDeriver(KEY, max_entries=10)
    first = deriver("alice")
    assert first == stdlib_hmac(KEY, "alice")
    assert len(deriver) == 1
    assert deriver("alice") is first  # served from the memo
    assert len(deriver) == 1


@pytest.mark.parametrize("bad", ["", " alice", "alice\n", "a\x00b", "a" * 257, "\udcff"])
def test_deriver_validates_what_it_has_not_seen_and_never_remembers_it(bad: str) -> None:
    """The memo is what lets a known id skip validation: an invalid id is refused on every
    call, however many valid ones came first, and is never stored."""
    deriver = IdentifierDeriver(KEY, max_entries=10)
    deriver("alice")
    for _ in range(2):
        with pytest.raises(InvalidUser):
            deriver(bad)
    assert len(deriver) == 1


def test_deriver_memo_is_bounded() -> None:
    deriver = IdentifierDeriver(KEY, max_entries=5)
    for n in range(100):
        assert deriver(f"user-{n}") == stdlib_hmac(KEY, f"user-{n}")
        assert len(deriver) <= 5
    assert len(deriver) == 5
    # Evicted ids still map to the same identifiers.
    assert deriver("user-0") == stdlib_hmac(KEY, "user-0")
    assert len(deriver) == 5


def test_deriver_evicts_the_oldest_entry() -> None:
    deriver = IdentifierDeriver(KEY, max_entries=2)
    a = deriver("a")
    deriver("b")
    deriver("c")  # evicts "a"
    assert deriver("b") is deriver("b")
    again = deriver("a")  # recomputed: equal, but a new string object
    assert again == a
    assert again is not a


@settings(max_examples=50)
@given(st.lists(valid_ids, max_size=60), st.integers(min_value=1, max_value=8))
def test_property_deriver_agrees_with_stdlib_and_stays_bounded(
    user_ids: list[str], max_entries: int
) -> None:
    deriver = IdentifierDeriver(KEY, max_entries=max_entries)
    for user_id in user_ids + user_ids[::-1]:
        assert deriver(user_id) == stdlib_hmac(KEY, user_id)
        assert len(deriver) <= max_entries


@given(valid_ids, valid_ids)
def test_property_distinct_ids_get_distinct_identifiers(a: str, b: str) -> None:
    assert (derive_identifier(KEY, a) == derive_identifier(KEY, b)) == (a == b)
