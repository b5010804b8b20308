"""What the fleet writes to Redis, without a server: key names, sealed values, fences."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from proxy.vending.fleet.sealing import NAME_LABEL, VALUE_LABEL, Entry, Sealer, derive, fence_of

KEY = b"k" * 32
SEALER = Sealer(KEY, "gini-auth-proxy:")


def test_the_two_keys_differ_from_each_other_and_from_the_identity_key() -> None:
    names, values = derive(KEY, NAME_LABEL), derive(KEY, VALUE_LABEL)
    assert len({names, values, KEY}) == 3
    assert len(names) == len(values) == 32


@given(st.text(min_size=1), st.sampled_from(["derived", "anonymous", "client"]))
def test_key_names_hide_the_key_and_share_one_cluster_slot(key: str, flow: str) -> None:
    names = SEALER.names(flow, key)
    for name in (names.value, names.lock):
        assert name.startswith("gini-auth-proxy:{")
        assert key not in name[len("gini-auth-proxy:") :] or len(key) < 3
    # The hash tag (between the braces) is the same: one slot, so one script may use both.
    assert names.value.split("}")[0] == names.lock.split("}")[0]


def test_names_depend_on_flow_key_and_identity_key() -> None:
    assert SEALER.names("derived", "a") != SEALER.names("anonymous", "a")
    assert SEALER.names("derived", "a") != SEALER.names("derived", "b")
    assert Sealer(b"x" * 32, "p:").names("derived", "a") != Sealer(KEY, "p:").names("derived", "a")


@given(st.text(), st.floats(min_value=0, max_value=4e9), st.integers(0, 2**62))
def test_a_sealed_value_opens_to_what_was_sealed(token: str, expires: float, fence: int) -> None:
    name = SEALER.names("derived", "id").value
    stored = SEALER.seal(name, Entry(token, expires), fence)
    assert SEALER.open(name, stored) == Entry(token, expires)
    assert fence_of(stored) == fence
    assert token.encode() not in stored or len(token) < 4


def test_a_value_is_a_miss_under_another_name_another_key_or_altered() -> None:
    name = SEALER.names("derived", "alice").value
    other = SEALER.names("derived", "bob").value
    stored = SEALER.seal(name, Entry("tok", 1e9), 7)
    assert SEALER.open(other, stored) is None  # moved to another user's key
    assert Sealer(b"x" * 32, "gini-auth-proxy:").open(name, stored) is None
    flipped = stored[:-1] + bytes([stored[-1] ^ 1])
    assert SEALER.open(name, flipped) is None
    refenced = b"9" + stored[1:]  # the fence is outside the seal: only the script reads it
    assert SEALER.open(name, refenced) == Entry("tok", 1e9)
    for junk in (None, b"", b"7:", b"nonsense", b"1:" + b"\0" * 40):
        assert SEALER.open(name, junk) is None


def test_fence_of_malformed_values() -> None:
    assert fence_of(None) is None
    assert fence_of(b"x:abc") is None
    assert fence_of(b"12") is None
    assert fence_of(b"12:abc") == 12
