"""Tests of header filtering, URL rewriting (proxy/rewrite.py) and body recoding (proxy/body.py)."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from typing import Any

import pytest
from aiohttp import StreamReader
from aiohttp.base_protocol import BaseProtocol
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy.config.memo import SIZES
from proxy.forwarding.body import read_bounded, recode_json
from proxy.forwarding.rewrite import (
    HOP_BY_HOP,
    NEVER_FORWARD,
    NEVER_RETURN,
    HeaderFilter,
    UrlRewriter,
    is_json_type,
)

from .conftest import examples

PAY_API = "https://pay-api.gini.net"
PUBLIC = "http://127.0.0.1:8080"
TO_PUBLIC = UrlRewriter(PAY_API, PUBLIC)
TO_UPSTREAM = UrlRewriter(PUBLIC, PAY_API)

JSON = Any  # a decoded JSON document


# --- header filtering ----------------------------------------------------------------------


def filter_headers(items: list[tuple[str, str]], drop: frozenset[str]) -> list[tuple[str, str]]:
    """The product's one filter (a fresh `HeaderFilter`), seen as a list of pairs."""
    return list(HeaderFilter(drop)(CIMultiDict(items)).items())


def canonical(name: str) -> str:
    """How a name is compared: case-insensitive, and `_` taken for `-` (as many stacks do)."""
    return name.lower().replace("_", "-")


def reference_filter(items: list[tuple[str, str]], drop: frozenset[str]) -> list[tuple[str, str]]:
    """RFC 9110 section 7.6.1 spelled out: drop the named headers and those `Connection` lists,
    reading `_` as `-` in every name."""
    listed = {
        canonical(token.strip())
        for name, value in items
        if name.lower() == "connection"
        for token in value.split(",")
    }
    dropped = {canonical(name) for name in drop}
    return [(n, v) for n, v in items if canonical(n) not in dropped | listed]


def test_filter_headers_drops_listed_names_in_any_case() -> None:
    items = [
        ("Authorization", "Basic x"),
        ("AUTHORIZATION", "Basic y"),
        ("Cookie", "a=b"),
        ("Accept", "application/json"),
        ("x-user-identifier", "forged"),
        ("Transfer-Encoding", "chunked"),
        ("X-Custom", "1"),
    ]
    assert filter_headers(items, NEVER_FORWARD) == [
        ("Accept", "application/json"),
        ("X-Custom", "1"),
    ]


def test_filter_headers_drops_underscore_spellings() -> None:
    items = [
        ("X_User_Identifier", "forged"),
        ("x_jwt_authorization", "Bearer forged"),
        ("Proxy_Authorization", "Basic eDp5"),
        ("Transfer_Encoding", "chunked"),
        ("X_Custom", "1"),
    ]
    assert filter_headers(items, NEVER_FORWARD) == [("X_Custom", "1")]
    # A configured name with an underscore drops the hyphenated spelling too.
    assert filter_headers([("X-User-Id", "bob"), ("X-Kept", "1")], frozenset({"x_user_id"})) == [
        ("X-Kept", "1")
    ]


def test_filter_headers_drops_names_listed_in_connection() -> None:
    items = [
        ("Connection", "keep-alive, X-Secret-Hop ,  x-other"),
        ("X-Secret-Hop", "1"),
        ("x-OTHER", "2"),
        ("X-Kept", "3"),
    ]
    assert filter_headers(items, NEVER_FORWARD) == [("X-Kept", "3")]
    # Even when the drop set does not contain Connection itself, what it lists goes.
    assert filter_headers(items, frozenset()) == [
        ("Connection", "keep-alive, X-Secret-Hop ,  x-other"),
        ("X-Kept", "3"),
    ]


def test_filter_headers_keeps_order_and_duplicates() -> None:
    items = [("B", "1"), ("A", "1"), ("B", "2"), ("Cookie", "x"), ("a", "2"), ("B", "3")]
    assert filter_headers(items, NEVER_FORWARD) == [
        ("B", "1"),
        ("A", "1"),
        ("B", "2"),
        ("a", "2"),
        ("B", "3"),
    ]


def test_header_sets_cover_the_contract() -> None:
    for name in ("authorization", "proxy-authorization", "x-user-identifier", "cookie"):
        assert name in NEVER_FORWARD
    assert "x-jwt-authorization" in NEVER_FORWARD
    assert HOP_BY_HOP <= NEVER_FORWARD
    assert HOP_BY_HOP <= NEVER_RETURN
    assert "set-cookie" in NEVER_RETURN


def _random_case(name: str, flips: list[bool]) -> str:
    return "".join(
        c.upper() if flip else c.lower()
        for c, flip in zip(name, flips + [False] * len(name), strict=False)
    )


_token = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_never_forwarded = st.builds(
    _random_case, st.sampled_from(sorted(NEVER_FORWARD)), st.lists(st.booleans())
)
_header_name = st.one_of(
    _never_forwarded,
    # Underscore spellings (`X_User_Identifier`), which many stacks read as the hyphenated name.
    st.tuples(_never_forwarded, st.lists(st.booleans())).map(
        lambda pair: "".join(
            "_" if c == "-" and flip else c
            for c, flip in zip(pair[0], pair[1] + [True] * len(pair[0]), strict=False)
        )
    ),
    _token.map(lambda t: "X_" + t.replace("-", "_")),
    _token.map(lambda t: "X-" + t),
    st.sampled_from(["Accept", "Content-Type", "Connection", "User-Agent"]),
)
_header_value = st.one_of(
    st.lists(st.one_of(_token, _token.map(lambda t: "X-" + t)), max_size=3).map(", ".join),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
)


@settings(max_examples=examples(100))
@given(st.lists(st.tuples(_header_name, _header_value), max_size=20))
def test_property_filter_headers(items: list[tuple[str, str]]) -> None:
    out = filter_headers(items, NEVER_FORWARD)
    listed = {
        canonical(token.strip())
        for name, value in items
        if name.lower() == "connection"
        for token in value.split(",")
    }
    for name, _ in out:
        assert canonical(name) not in NEVER_FORWARD  # also never in its underscore spelling
        assert canonical(name) not in listed
    # Exactly the other headers survive, in their order, duplicates included.
    expected = [
        (n, v) for n, v in items if canonical(n) not in NEVER_FORWARD and canonical(n) not in listed
    ]
    assert out == expected


# --- UrlRewriter.url -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://pay-api.gini.net", PUBLIC),
        ("https://pay-api.gini.net/", PUBLIC + "/"),
        ("https://pay-api.gini.net/documents/1", PUBLIC + "/documents/1"),
        ("http://pay-api.gini.net/documents/1", PUBLIC + "/documents/1"),
        ("HTTPS://PAY-API.Gini.NET/documents/1", PUBLIC + "/documents/1"),
        ("https://pay-api.gini.net:443/documents/1", PUBLIC + "/documents/1"),
        ("http://pay-api.gini.net:80/documents/1", PUBLIC + "/documents/1"),
        ("https://pay-api.gini.net?x=1", PUBLIC + "?x=1"),
        ("https://pay-api.gini.net#frag", PUBLIC + "#frag"),
        # The path after the origin is kept exactly, case and escapes included.
        ("https://pay-api.gini.net/Documents/%2F..", PUBLIC + "/Documents/%2F.."),
    ],
)
def test_url_rewrites_urls_at_the_source_origin(url: str, expected: str) -> None:
    assert TO_PUBLIC.url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://pay-api.gini.net.evil.com/x",
        "https://pay-api.gini.netx/",
        "https://pay-api.gini.net-evil.com/",
        "https://evil.com/https://pay-api.gini.net/",
        "https://evil.com/?u=https://pay-api.gini.net/",
        "https://xpay-api.gini.net/",
        "https://api.gini.net/",
        "https://pay-api.gini.net:4430/x",
        "https://pay-api.gini.net:8080/x",
        "https://pay-api.gini.net@evil.com/x",  # userinfo "pay-api.gini.net", host evil.com
        "ftp://pay-api.gini.net/x",
        "//pay-api.gini.net/x",
        "/documents/1",
        "",
        " https://pay-api.gini.net/x",
        # Unicode lookalikes that Python's case-insensitive matching would fold to ASCII:
        # dotless i, long s and the Kelvin sign name other (IDN) hosts.
        "https://pay-ap\u0131.gini.net/x",
        "http\u017f://pay-api.gini.net/x",
    ],
)
def test_url_leaves_foreign_urls_alone(url: str) -> None:
    assert TO_PUBLIC.url(url) == url


def test_url_leaves_userinfo_urls_alone() -> None:
    # What the code does: an origin with credentials is not the configured origin, so the URL
    # is left as it is (and never rewritten to a proxy URL carrying someone's credentials).
    assert TO_PUBLIC.url("https://user@pay-api.gini.net/") == "https://user@pay-api.gini.net/"
    assert TO_PUBLIC.url("https://u:p@pay-api.gini.net/x") == "https://u:p@pay-api.gini.net/x"


def test_kelvin_sign_is_not_a_k() -> None:
    rewriter = UrlRewriter("https://kube.example", PUBLIC)
    assert rewriter.url("https://KUBE.example/a") == PUBLIC + "/a"
    assert rewriter.url("https://\u212aube.example/a") == "https://\u212aube.example/a"


def test_url_with_a_path_prefix_and_port() -> None:
    rewriter = UrlRewriter("http://10.0.0.5:8081/gini/", "https://proxy.example/p")
    assert rewriter.url("http://10.0.0.5:8081/gini") == "https://proxy.example/p"
    assert (
        rewriter.url("http://10.0.0.5:8081/gini/documents") == "https://proxy.example/p/documents"
    )
    assert rewriter.url("HTTP://10.0.0.5:8081/gini?q") == "https://proxy.example/p?q"
    for foreign in (
        "http://10.0.0.5:8081/",
        "http://10.0.0.5:8081/ginix",
        "http://10.0.0.5:8081/GINI/documents",  # paths are case-sensitive
        "http://10.0.0.5/gini/documents",  # the non-default port must be present
        "http://10.0.0.5:80/gini/documents",
        "http://10.0.0.5:80810/gini",
        "http://10.0.0.50:8081/gini",
    ):
        assert rewriter.url(foreign) == foreign


def test_url_with_an_ipv6_source() -> None:
    rewriter = UrlRewriter("http://[::1]:9000", PUBLIC)
    assert rewriter.url("http://[::1]:9000/a") == PUBLIC + "/a"
    assert rewriter.url("http://[::2]:9000/a") == "http://[::2]:9000/a"
    assert rewriter.url("http://[::1]:90001/a") == "http://[::1]:90001/a"


def test_url_default_port_source_accepts_either_default_port() -> None:
    # What the code does: with a default-port source, both :80 and :443 are taken as the
    # source whatever the scheme (a Gini URL never carries the other scheme's port).
    assert TO_PUBLIC.url("https://pay-api.gini.net:80/a") == PUBLIC + "/a"
    assert TO_PUBLIC.url("http://pay-api.gini.net:443/a") == PUBLIC + "/a"


_scheme = st.sampled_from(["http", "https"]).flatmap(
    lambda s: st.lists(st.booleans(), min_size=len(s), max_size=len(s)).map(
        lambda flips: _random_case(s, flips)
    )
)


def _host_variant(host: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(host), max_size=len(host)).map(
        lambda flips: _random_case(host, flips)
    )


_url_tail_char = st.one_of(
    st.sampled_from(list("/?#=&%.:@-_~ \"'\\")),
    st.characters(blacklist_categories=("Cs",)),  # type: ignore[arg-type]
)
_under_tail = st.one_of(
    st.just(""),
    st.tuples(st.sampled_from("/?#"), st.text(_url_tail_char, max_size=20)).map("".join),
)


@given(
    _scheme, _host_variant("pay-api.gini.net"), st.sampled_from(["", ":443", ":80"]), _under_tail
)
def test_property_url_under_the_source_is_rewritten(
    scheme: str, host: str, port: str, tail: str
) -> None:
    url = f"{scheme}://{host}{port}{tail}"
    assert TO_PUBLIC.url(url) == PUBLIC + tail


@given(
    _scheme,
    _host_variant("pay-api.gini.net"),
    st.text(_url_tail_char, min_size=1, max_size=20).filter(lambda t: t[0] not in "/?#:"),
)
def test_property_url_with_a_longer_host_is_left_alone(scheme: str, host: str, tail: str) -> None:
    url = f"{scheme}://{host}{tail}"
    assert TO_PUBLIC.url(url) == url


@given(st.text(_url_tail_char, max_size=40))
def test_property_url_never_touches_other_text(text: str) -> None:
    assume(not text.lower().startswith(("http://pay-api.gini.net", "https://pay-api.gini.net")))
    assert TO_PUBLIC.url(text) == text


@given(_under_tail)
def test_property_reverse_rewrite_round_trips(tail: str) -> None:
    url = PAY_API + tail
    public = TO_PUBLIC.url(url)
    assert public == PUBLIC + tail
    assert TO_UPSTREAM.url(public) == url


# --- UrlRewriter.json ----------------------------------------------------------------------


def _rewrite_strings(doc: JSON, rewriter: UrlRewriter) -> JSON:
    """The model: every string of the document (keys too) passed through `rewriter.url`."""
    if isinstance(doc, str):
        return rewriter.url(doc)
    if isinstance(doc, list):
        return [_rewrite_strings(item, rewriter) for item in doc]
    if isinstance(doc, dict):
        return {rewriter.url(key): _rewrite_strings(value, rewriter) for key, value in doc.items()}
    return doc


def _source_urls(host: str) -> st.SearchStrategy[str]:
    return st.builds(
        lambda scheme, h, port, tail: f"{scheme}://{h}{port}{tail}",
        _scheme,
        _host_variant(host),
        st.sampled_from(["", ":443", ":80"]),
        _under_tail,
    )


_lookalikes = st.sampled_from(
    [
        "https://pay-api.gini.net.evil.com/x",
        "https://pay-api.gini.netx/",
        "https://evil.com/https://pay-api.gini.net/",
        "https://user@pay-api.gini.net/",
        "https://pay-api.gini.net\u00fc/x",
        'https://pay-api.gini.net"/x',
        "https://pay-api.gini.net\\/x",
        "https://pay-api.gini.net\n",
        'see "https://pay-api.gini.net/documents/1" here',
        'x"https://pay-api.gini.net/a',
        "pay-api.gini.net",
    ]
)
_strings = st.one_of(
    st.text(max_size=12),
    _source_urls("pay-api.gini.net"),
    _lookalikes,
    st.tuples(st.text(max_size=5), _source_urls("pay-api.gini.net")).map("".join),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    _strings,
)
documents = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(_strings, children, max_size=5),
    ),
    max_leaves=25,
)


def _dump(doc: JSON, ensure_ascii: bool, escape_slashes: bool, compact: bool) -> bytes:
    text = json.dumps(
        doc, ensure_ascii=ensure_ascii, separators=(",", ":") if compact else (", ", ": ")
    )
    if escape_slashes:
        text = text.replace("/", "\\/")  # `/` only occurs inside strings in JSON
    return text.encode()


@settings(max_examples=examples(400))
@given(documents, st.booleans(), st.booleans(), st.booleans())
def test_property_json_rewrites_exactly_the_url_strings(
    doc: JSON, ensure_ascii: bool, escape_slashes: bool, compact: bool
) -> None:
    body = _dump(doc, ensure_ascii, escape_slashes, compact)
    out = TO_PUBLIC.json(body)
    expected = _rewrite_strings(doc, TO_PUBLIC)
    assert json.loads(out) == expected
    if expected == doc:
        assert out == body  # nothing to rewrite: every byte as it was


@settings(max_examples=examples(100))
@given(documents, st.booleans())
def test_property_json_keeps_every_other_byte(doc: JSON, ensure_ascii: bool) -> None:
    # Rewriting a document equals rewriting each of its string tokens on its own.
    items = doc if isinstance(doc, list) else [doc]
    pieces = [json.dumps(item, ensure_ascii=ensure_ascii).encode() for item in items]
    body = b"[" + b", ".join(pieces) + b"]"
    assert TO_PUBLIC.json(body) == b"[" + b", ".join(TO_PUBLIC.json(p) for p in pieces) + b"]"


def test_json_keeps_numbers_and_escapes_byte_for_byte() -> None:
    body = (
        b'{"n": 1.50, "e": 1E+2, "neg": -0, "s": "caf\\u00e9 \\"quoted\\" \\\\ \\/",'
        b' "u": "https://pay-api.gini.net/documents/1", "big": 123456789012345678901234567890}'
    )
    out = TO_PUBLIC.json(body)
    assert out == body.replace(b"https://pay-api.gini.net", PUBLIC.encode())


def test_json_handles_escaped_slashes() -> None:
    body = b'{"href":"https:\\/\\/pay-api.gini.net\\/documents\\/1"}'
    out = TO_PUBLIC.json(body)
    # The origin is replaced; the rest of the string keeps its escapes.
    assert out == b'{"href":"' + PUBLIC.encode() + b'\\/documents\\/1"}'
    assert json.loads(out) == {"href": PUBLIC + "/documents/1"}


@pytest.mark.parametrize("slashes", [b"//", b"\\/\\/", b"/\\/", b"\\//"])
def test_json_rewrites_every_spelling_of_the_scheme_slashes(slashes: bytes) -> None:
    """Whichever of the two slashes after the scheme is escaped, the URL is found (the quick
    check for bodies without URLs must not skip any of them)."""
    body = b'{"a": 1, "href": "https:' + slashes + b'pay-api.gini.net/documents/1"}'
    out = TO_PUBLIC.json(body)
    assert json.loads(out) == {"a": 1, "href": PUBLIC + "/documents/1"}


def test_json_without_urls_is_returned_as_is() -> None:
    body = b'{"totalCount": 2, "name": "a/b", "time": "12:30", "path": "x:y//z"}'
    assert TO_PUBLIC.json(body) is body


def test_json_leaves_urls_inside_longer_strings_alone() -> None:
    body = json.dumps({"message": 'see "https://pay-api.gini.net/documents/1" for details'})
    assert TO_PUBLIC.json(body.encode()) == body.encode()


def test_json_leaves_a_host_followed_by_other_escapes_alone() -> None:
    for text in (
        "https://pay-api.gini.net\u00e9/x",
        "https://pay-api.gini.net\t",
        'https://pay-api.gini.net"',
    ):
        body = json.dumps([text]).encode()
        assert TO_PUBLIC.json(body) == body


def test_json_rewrites_gini_shaped_documents() -> None:
    doc = {
        "id": "626626a0-749f-11e2-bfd6-000000000000",
        "_links": {
            "extractions": "https://pay-api.gini.net/documents/626626a0/extractions",
            "document": "https://pay-api.gini.net/documents/626626a0",
        },
        "pages": [
            {
                "images": {
                    "750x900": "https://pay-api.gini.net/documents/626626a0/pages/1/750x900",
                },
                "pageNumber": 1,
            }
        ],
        "partialDocuments": [{"document": "https://pay-api.gini.net/documents/p1"}],
        "name": "Rechnung für Müller.pdf",
        "sourceClassification": "SCANNED",
    }
    out = json.loads(TO_PUBLIC.json(json.dumps(doc, ensure_ascii=False).encode()))
    assert out["_links"]["document"] == PUBLIC + "/documents/626626a0"
    assert out["pages"][0]["images"]["750x900"] == PUBLIC + "/documents/626626a0/pages/1/750x900"
    assert out["partialDocuments"][0]["document"] == PUBLIC + "/documents/p1"
    assert out["name"] == doc["name"]
    # And back: a composite-document request body gets the reverse rewrite.
    back = json.loads(TO_UPSTREAM.json(json.dumps(out).encode()))
    assert back == doc


def test_json_without_the_host_is_returned_as_the_same_object() -> None:
    body = b'{"a": "https://example.com/x"}'
    assert TO_PUBLIC.json(body) is body


def test_json_on_invalid_json_still_rewrites_string_tokens() -> None:
    assert TO_PUBLIC.json(b'["https://pay-api.gini.net/a", oops') == (
        b'["' + PUBLIC.encode() + b'/a", oops'
    )


_canonical_urls = _under_tail.map(lambda tail: PAY_API + tail)
_round_trip_docs = st.recursive(
    st.one_of(st.none(), st.integers(), st.text(max_size=8), _canonical_urls),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=6), children, max_size=4),
    ),
    max_leaves=15,
)


@given(_round_trip_docs, st.booleans())
def test_property_json_reverse_rewrite_round_trips(doc: JSON, ensure_ascii: bool) -> None:
    assume("127.0.0.1:8080" not in json.dumps(doc))
    body = json.dumps(doc, ensure_ascii=ensure_ascii).encode()
    public = TO_PUBLIC.json(body)
    assert "pay-api.gini.net" not in public.decode().lower()
    assert TO_UPSTREAM.json(public) == body


def test_json_target_with_a_path_prefix() -> None:
    rewriter = UrlRewriter("http://127.0.0.1:8081", "https://proxy.example/gini")
    body = b'["http://127.0.0.1:8081/documents", "http:\\/\\/127.0.0.1:8081\\/x", 1]'
    assert json.loads(rewriter.json(body)) == [
        "https://proxy.example/gini/documents",
        "https://proxy.example/gini/x",
        1,
    ]


# --- is_json_type --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/vnd.gini.v1+json", True),
        ("application/vnd.gini.v1.composite+json; charset=UTF-8", True),
        ("application/problem+json", True),
        (" application/json ", True),
        ("", False),
        ("text/json", False),
        ("application/jsonx", False),
        ("application/json-seq", False),
        ("application/pdf", False),
        ("application/vnd.gini.v1.partial+png", False),
        ("text/plain; x=application/json", False),
    ],
)
def test_is_json_type(content_type: str, expected: bool) -> None:
    assert is_json_type(content_type) is expected


# --- body.recode_json ----------------------------------------------------------------------

DOC = json.dumps({"href": "https://pay-api.gini.net/documents/1", "n": 1}).encode()
REWRITTEN = DOC.replace(b"https://pay-api.gini.net", PUBLIC.encode())
PLAIN = b'{"n": 1, "href": "https://example.com/x"}'


def test_recode_identity() -> None:
    assert recode_json(DOC, "identity", 1000, TO_PUBLIC.json) == REWRITTEN
    assert recode_json(PLAIN, "identity", 1000, TO_PUBLIC.json) is None  # nothing to rewrite


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip"])
def test_recode_gzip(encoding: str) -> None:
    assert recode_json(gzip.compress(DOC), encoding, 1000, TO_PUBLIC.json) == REWRITTEN
    assert recode_json(gzip.compress(PLAIN), encoding, 1000, TO_PUBLIC.json) is None


def test_recode_deflate_zlib_wrapped() -> None:
    assert recode_json(zlib.compress(DOC), "deflate", 1000, TO_PUBLIC.json) == REWRITTEN


def test_recode_gives_up_on_raw_deflate() -> None:
    # "deflate" without the zlib wrapper (seen from some servers) is relayed untouched.
    packer = zlib.compressobj(wbits=-15)
    raw = packer.compress(DOC) + packer.flush()
    assert recode_json(raw, "deflate", 1000, TO_PUBLIC.json) is None


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
def test_recode_gives_up_on_unknown_encodings(encoding: str) -> None:
    assert recode_json(gzip.compress(DOC), encoding, 1000, TO_PUBLIC.json) is None


def test_recode_gives_up_on_corrupt_data() -> None:
    packed = gzip.compress(DOC)
    assert recode_json(b"not gzip at all", "gzip", 1000, TO_PUBLIC.json) is None
    assert recode_json(packed[:-12], "gzip", 1000, TO_PUBLIC.json) is None  # truncated
    broken = packed[:20] + bytes(b ^ 0xFF for b in packed[20:30]) + packed[30:]
    assert recode_json(broken, "gzip", 1000, TO_PUBLIC.json) is None
    assert recode_json(b"", "gzip", 1000, TO_PUBLIC.json) is None


def test_recode_respects_the_decompressed_limit() -> None:
    packed = gzip.compress(DOC)
    assert recode_json(packed, "gzip", len(DOC), TO_PUBLIC.json) == REWRITTEN
    assert recode_json(packed, "gzip", len(DOC) - 1, TO_PUBLIC.json) is None


def test_recode_refuses_a_zip_bomb() -> None:
    bomb = gzip.compress(b'["https://pay-api.gini.net/' + b"a" * (50 << 20) + b'"]')
    assert len(bomb) < 100_000
    assert recode_json(bomb, "gzip", 1 << 20, TO_PUBLIC.json) is None


def test_recode_does_not_truncate_a_multi_member_gzip() -> None:
    # Concatenated gzip members are one valid body (RFC 1952); decoding only the first and
    # relaying that as the whole answer would silently cut the document.
    split = DOC.index(b', "n"')  # the first member holds the whole URL
    body = gzip.compress(DOC[:split]) + gzip.compress(DOC[split:])
    result = recode_json(body, "gzip", 1000, TO_PUBLIC.json)
    assert result is None or result == REWRITTEN


# --- body.read_bounded ---------------------------------------------------------------------


class _Protocol(BaseProtocol):
    """A transport-less protocol for feeding a StreamReader by hand."""

    @property
    def connected(self) -> bool:
        return True  # a reader waits for more data only while the connection is open

    def pause_reading(self) -> None:
        pass

    def resume_reading(self, resume_parser: bool = True) -> None:
        pass


def _reader(*chunks: bytes, eof: bool = True) -> StreamReader:
    loop = asyncio.get_running_loop()
    stream = StreamReader(_Protocol(loop), limit=2**16, loop=loop)
    for chunk in chunks:
        stream.feed_data(chunk)
    if eof:
        stream.feed_eof()
    return stream


async def test_read_bounded_small_body_is_complete() -> None:
    assert await read_bounded(_reader(b"hello ", b"world"), 100) == (b"hello world", True)


async def test_read_bounded_empty_body() -> None:
    assert await read_bounded(_reader(), 100) == (b"", True)
    assert await read_bounded(_reader(), 0) == (b"", True)


async def test_read_bounded_exactly_the_limit_is_complete() -> None:
    assert await read_bounded(_reader(b"a" * 50, b"b" * 50), 100) == (b"a" * 50 + b"b" * 50, True)


async def test_read_bounded_over_the_limit_returns_a_prefix_and_leaves_the_rest() -> None:
    stream = _reader(b"a" * 60, b"b" * 60, b"c" * 60)
    prefix, complete = await read_bounded(stream, 100)
    assert not complete
    assert len(prefix) == 101  # one byte more than the limit proves there is more
    rest = await stream.read()
    assert prefix + rest == b"a" * 60 + b"b" * 60 + b"c" * 60


async def test_read_bounded_waits_for_data_arriving_later() -> None:
    stream = _reader(eof=False)

    async def feed() -> None:
        for n in range(5):
            await asyncio.sleep(0)
            stream.feed_data(bytes([65 + n]) * 10)
        stream.feed_eof()

    feeder = asyncio.create_task(feed())
    assert await read_bounded(stream, 1000) == (
        b"AAAAAAAAAABBBBBBBBBBCCCCCCCCCCDDDDDDDDDDEEEEEEEEEE",
        True,
    )
    await feeder


async def test_read_bounded_stops_without_waiting_for_eof_once_over_the_limit() -> None:
    stream = _reader(b"x" * 200, eof=False)  # no EOF ever comes
    prefix, complete = await asyncio.wait_for(read_bounded(stream, 100), 5)
    assert (len(prefix), complete) == (101, False)


@given(st.lists(st.binary(min_size=1, max_size=50), max_size=10), st.integers(0, 300))
async def test_property_read_bounded(chunks: list[bytes], limit: int) -> None:
    whole = b"".join(chunks)
    stream = _reader(*chunks)
    prefix, complete = await read_bounded(stream, limit)
    assert complete == (len(whole) <= limit)
    if complete:
        assert prefix == whole
    else:
        assert prefix == whole[: limit + 1]
        assert prefix + await stream.read() == whole


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["Connection", "X-A", "x-b", "Keep-Alive", "Set-Cookie", "Date", "Server"]
            ),
            st.sampled_from(["x-a", "keep-alive, X-B", "close", "v", ""]),
        ),
        max_size=12,
    )
)
def test_header_filter_agrees_with_the_rule_once_it_remembers(
    items: list[tuple[str, str]],
) -> None:
    """One filter, used for every example as the proxy uses it for every request, keeps exactly
    what the rule, spelled out, keeps: what it remembers of earlier headers changes nothing."""
    fast = list(_SHARED_FILTER(CIMultiDict(items)).items())
    assert fast == reference_filter(items, _SHARED_FILTER.drop)


_SHARED_FILTER = HeaderFilter(frozenset(("connection", "set-cookie", "server")))


def test_header_filter_memory_is_bounded_and_stays_right() -> None:
    """Callers choose header names: a stream of new ones never grows the filter past its bound,
    and names seen before the memory was cleared are still filtered right."""
    drop = frozenset(("x-secret",))
    keep = HeaderFilter(drop)
    for n in range(2_000):
        items = [
            (f"X-Name-{n}", "v"),
            ("X-Secret", "s"),
            ("x-SECRET", "t"),
            ("Connection", "x-kept"),
        ]
        assert list(keep(CIMultiDict(items)).items()) == [
            (f"X-Name-{n}", "v"),
            ("Connection", "x-kept"),
        ]
        assert len(keep._verdicts) <= SIZES["header_verdicts"]
    assert list(keep(CIMultiDict([("X-Name-0", "v"), ("X-SECRET", "s")])).items()) == [
        ("X-Name-0", "v")
    ]
