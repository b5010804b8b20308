"""The one bounded memo type (`proxy.config.memo`) and its table of sizes."""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.memo import SIZES, Memo

PACKAGE = Path(__file__).resolve().parents[1] / "proxy"


@given(
    size=st.integers(min_value=1, max_value=6),
    keys=st.lists(st.integers(min_value=0, max_value=12), max_size=60),
)
def test_a_memo_keeps_the_newest_entries_up_to_its_size(size: int, keys: list[int]) -> None:
    memo: Memo[int, str] = Memo("upstream_urls", size)
    model: OrderedDict[int, str] = OrderedDict()  # first stored, first out; a hit moves nothing
    for key in keys:
        if memo.entries.get(key) is None:
            assert memo.remember(key, f"v{key}") == f"v{key}"
            model[key] = f"v{key}"
            if len(model) > size:
                model.popitem(last=False)
        assert len(memo) <= size
        assert memo.items() == list(model.items())
        assert memo.entries == dict(model)


def test_storing_a_key_again_evicts_nothing() -> None:
    memo: Memo[str, int] = Memo("header_verdicts", 2)
    memo.remember("a", 1)
    memo.remember("b", 2)
    memo.remember("a", 3)
    assert memo.items() == [("a", 3), ("b", 2)]
    memo.remember("c", 4)
    assert memo.items() == [("b", 2), ("c", 4)]


def test_sizes_come_from_the_table() -> None:
    assert Memo("user_identifiers").size == SIZES["user_identifiers"]
    with pytest.raises(KeyError):
        Memo("not_in_the_table")
    with pytest.raises(ValueError, match="at least 1"):
        Memo("route_templates", 0)


def test_every_memo_of_the_proxy_is_in_the_table_and_every_size_is_used() -> None:
    """One table, no hand-picked sizes elsewhere: each `Memo("name")` the proxy builds has its
    size in SIZES, and SIZES holds no name nothing uses."""
    used = set()
    for path in PACKAGE.rglob("*.py"):
        used.update(re.findall(r'\bMemo\(\s*"(\w+)"', path.read_text(encoding="utf-8")))
    assert used == set(SIZES)
