"""Tests of path-template matching for bounded metric labels (proxy/routes.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.web.routes import GINI_TEMPLATES, OTHER, RouteTable

TABLE = RouteTable(GINI_TEMPLATES)
LABELS = frozenset(GINI_TEMPLATES) | {OTHER}


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/login", "/login"),
        ("/documents", "/documents"),
        ("/documents/626626a0-749f-11e2-bfd6-000000000000", "/documents/{id}"),
        ("/documents/abc/extractions", "/documents/{id}/extractions"),
        ("/documents/abc/extractions/amountToPay", "/documents/{id}/extractions/{name}"),
        ("/documents/abc/layout", "/documents/{id}/layout"),
        ("/documents/abc/pages", "/documents/{id}/pages"),
        ("/documents/abc/pages/1/750x900", "/documents/{id}/pages/{page}/{size}"),
        ("/documents/abc/processed", "/documents/{id}/processed"),
        ("/documents/abc/file", "/documents/{id}/file"),
        ("/paymentRequests", "/paymentRequests"),
        ("/paymentRequests/r1", "/paymentRequests/{id}"),
        ("/paymentRequests/r1/payment", "/paymentRequests/{id}/payment"),
        ("/payments/p1", "/payments/{id}"),
        ("/paymentProviders", "/paymentProviders"),
        ("/paymentProviders/x", "/paymentProviders/{id}"),
        ("/configurations", "/configurations"),
        ("/events/error", "/events/error"),
        ("/events/batch", "/events/batch"),
    ],
)
def test_known_paths_map_to_their_template(path: str, template: str) -> None:
    assert TABLE.match(path) == template


def test_every_template_matches_itself() -> None:
    for template in GINI_TEMPLATES:
        assert TABLE.match(template) == template


def test_a_trailing_slash_is_ignored() -> None:
    assert TABLE.match("/documents/") == "/documents"
    assert TABLE.match("/documents/abc/") == "/documents/{id}"
    assert TABLE.match("/paymentProviders/") == "/paymentProviders"


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "",
        "/nope",
        "/documents/abc/unknown",
        "/documents/abc/pages/1",  # one segment short of {page}/{size}
        "/documents/abc/pages/1/2/3",
        "/Documents",  # paths are case-sensitive
        "/documents//extractions",  # an empty segment is not an {id}
        "/login/extra",
        "/_proxy/tokens/derived",  # not in this table
        "/events/other",
    ],
)
def test_unknown_paths_are_other(path: str) -> None:
    assert TABLE.match(path) == OTHER


def test_literal_segments_win_over_placeholders() -> None:
    assert TABLE.match("/documents/abc/extractions/feedback") == (
        "/documents/{id}/extractions/feedback"
    )
    assert TABLE.match("/documents/abc/extractions/feedbackx") == (
        "/documents/{id}/extractions/{name}"
    )


def test_literal_wins_whatever_the_table_order() -> None:
    table = RouteTable(["/things/{id}", "/things/new", "/things/{id}/{part}", "/things/{id}/x"])
    assert table.match("/things/new") == "/things/new"
    assert table.match("/things/old") == "/things/{id}"
    assert table.match("/things/a/x") == "/things/{id}/x"
    assert table.match("/things/a/y") == "/things/{id}/{part}"


def test_a_template_with_an_empty_segment_never_crashes_a_lookup() -> None:
    # Response-cache routes come from the config, which only checks that they start with "/".
    table = RouteTable(["/a//b", "/a/{x}/b"])
    assert table.match("/a/x/b") == "/a/{x}/b"
    assert table.match("/a//b") == "/a//b"
    assert table.match("/a/x/c") == OTHER


_segment = st.one_of(
    st.sampled_from(
        ["documents", "pages", "extractions", "feedback", "login", "payments", "{id}", "", "."]
    ),
    st.text(st.characters(blacklist_characters="/"), max_size=12),
)


@given(st.lists(_segment, max_size=8).map("/".join), st.booleans())
def test_property_any_path_gets_a_bounded_label(tail: str, leading_slash: bool) -> None:
    path = ("/" if leading_slash else "") + tail
    assert TABLE.match(path) in LABELS


@given(
    st.sampled_from(GINI_TEMPLATES),
    st.lists(
        st.text(st.characters(blacklist_characters="/"), min_size=1, max_size=16),
        min_size=5,
        max_size=5,
    ),
    st.booleans(),
)
def test_property_filled_templates_map_back_to_a_template_they_fit(
    template: str, values: list[str], trailing_slash: bool
) -> None:
    segments = template.strip("/").split("/")
    filled = [values[i] if s.startswith("{") else s for i, s in enumerate(segments)]
    path = "/" + "/".join(filled) + ("/" if trailing_slash else "")
    got = TABLE.match(path)
    assert got in GINI_TEMPLATES
    got_segments = got.strip("/").split("/")
    assert len(got_segments) == len(filled)
    for want, seg in zip(got_segments, filled, strict=True):
        assert want == seg or want.startswith("{")
    # Where a value happens to equal a literal (".../extractions/feedback"), the more literal
    # template wins; otherwise the template that was filled is returned.
    literal_count = sum(not s.startswith("{") for s in got_segments)
    assert literal_count >= sum(not s.startswith("{") for s in segments)
