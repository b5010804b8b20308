"""PEM files are whole or refused: the splitter's properties, `check-config`, and a JWT key
bundle half-written under a running proxy (counted `error`, both keys stay published)."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from proxy.cli import main
from proxy.config import build_config
from proxy.config.jwt import pem_blocks
from proxy.config.pem import PemError, split_pem, split_pem_bytes
from proxy.config.reader import ConfigError
from proxy.config.reload import InvalidSecret
from proxy.config.signing_keys import load_signing_key
from proxy.sandbox import GiniSimulator
from proxy.sandbox.jwt_auth import JwtSettings

from .conftest import HMAC_KEY, USER, RunningProxy, StartProxy, eventually
from .jwt_support import ISSUER, JWKS_PATH, ec_pem, jwt_overrides
from .secret_volume import SecretVolume

# --- the splitter ------------------------------------------------------------------------------

_LABEL_CHAR = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="-")
_LABEL = st.one_of(
    st.sampled_from(["PRIVATE KEY", "EC PRIVATE KEY", "CERTIFICATE", "RSA PRIVATE KEY"]),
    st.lists(st.text(_LABEL_CHAR, min_size=1, max_size=6), min_size=1, max_size=3).map(" ".join),
)
_SEPARATOR = st.sampled_from(["\n", "\n\n", "\r\n", "\n  \n", "\n\t\n", "\r\n\r\n"])


@st.composite
def pem_block(draw: st.DrawFn) -> str:
    """One complete block as `split_pem` returns it: base64 body lines of 64, LF endings."""
    label = draw(_LABEL)
    body = base64.b64encode(draw(st.binary(min_size=1, max_size=200))).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----"]) + "\n"


@st.composite
def bundle(draw: st.DrawFn) -> tuple[str, list[str], list[int]]:
    """A file of complete blocks with any whitespace around them and line endings of either
    kind: (text, the blocks, where each block's END line ends in the text)."""
    blocks = draw(st.lists(pem_block(), min_size=1, max_size=4))
    crlf = draw(st.booleans())
    text = draw(st.sampled_from(["", "\n", "  \n", "\r\n"]))
    ends = []
    for index, block in enumerate(blocks):
        if index:
            text += draw(_SEPARATOR)
        text += block.rstrip("\n").replace("\n", "\r\n" if crlf else "\n")
        ends.append(len(text))
    text += draw(st.sampled_from(["", "\n", "\r\n", "\n\n  "]))
    return text, blocks, ends


@given(bundle())
def test_a_complete_bundle_splits_into_its_blocks(case: tuple[str, list[str], list[int]]) -> None:
    text, blocks, _ = case
    assert split_pem(text) == blocks
    assert pem_blocks(text) == blocks
    assert split_pem_bytes(text.encode()) == blocks


@given(bundle(), st.data())
def test_a_truncated_bundle_is_refused_unless_cut_between_blocks(
    case: tuple[str, list[str], list[int]], data: st.DataObject
) -> None:
    """Cut anywhere: what remains is either the first k blocks exactly (cut in the whitespace
    after an END line: a shorter file that is whole) or refused. Never a partial result."""
    text, blocks, ends = case
    cut = data.draw(st.integers(0, len(text) - 1), label="cut")
    prefix = text[:cut]
    whole = [k for k, end in enumerate(ends, 1) if end <= cut and not text[end:cut].strip()]
    if whole:
        assert split_pem(prefix) == blocks[: whole[-1]]
    else:
        with pytest.raises(PemError):
            split_pem(prefix)


_GARBAGE = st.text(min_size=1, max_size=40).filter(lambda g: g.strip() and "-----" not in g)


@given(bundle(), _GARBAGE, st.sampled_from(["", "\n", "\n\n"]), st.data())
def test_text_outside_the_blocks_is_refused_wherever_it_is(
    case: tuple[str, list[str], list[int]], garbage: str, gap: str, data: st.DataObject
) -> None:
    text, _, ends = case
    at = data.draw(st.sampled_from([0, *ends, len(text)]), label="at")
    with pytest.raises(PemError) as refused:
        split_pem(text[:at] + gap + garbage + "\n" + text[at:])
    assert _TEMPLATES.fullmatch(str(refused.value)), str(refused.value)  # nothing quoted


_TEMPLATES = re.compile(
    r"has text (after a complete PEM block|before the first PEM block), on line \d+ "
    r"\(a half-written file\?\)"
    r"|has a malformed or unexpected PEM boundary on line \d+ "
    r"\(the block that begins on line \d+ is not closed\)"
)


@given(bundle(), pem_block(), st.data())
def test_a_bundle_followed_by_half_a_block_is_refused(
    case: tuple[str, list[str], list[int]], other: str, data: st.DataObject
) -> None:
    """The attack: write key 2, then the first part of key 1."""
    text, _, _ = case
    # Anything short of the last "-" of the END line; an END missing one "-" is no END.
    half = other[: data.draw(st.integers(1, len(other.rstrip()) - 1), label="half")]
    with pytest.raises(PemError):
        split_pem(text + "\n" + half)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("-----BEGIN PRIVATE KEY-----\nQUJD\n-----END CERTIFICATE-----\n", "labels differ"),
        ("-----BEGIN A-----\nQUJD\n-----BEGIN A-----\nQUJD\n-----END A-----\n", "line 3"),
        ("-----BEGIN A-----\nQUJD\n-----END A----- trailing\n", "boundary on line 3"),
        ("-----BEGIN A-----\nQUJD\n", "never ends"),
        ("just some text\n", "holds no PEM block"),
        ("  \n", "holds no PEM block"),
        ("note\n-----BEGIN A-----\nQUJD\n-----END A-----\n", "before the first PEM block"),
    ],
)
def test_each_kind_of_broken_pem_is_named(text: str, words: str) -> None:
    with pytest.raises(PemError, match=re.escape(words)):
        split_pem(text)


def test_a_pem_error_is_an_invalid_secret_and_non_ascii_is_refused() -> None:
    assert issubclass(PemError, InvalidSecret)  # a reload pass counts it `error`
    with pytest.raises(PemError, match="not ASCII"):
        split_pem_bytes("-----BEGIN A-----\nQUJ\u00e9\n-----END A-----\n".encode())


def test_real_keys_and_certificates_split_and_load() -> None:
    first, second = ec_pem(), ec_pem()
    blocks = split_pem(first + "\n" + second)
    assert [load_signing_key(b, "ES256").kid for b in blocks] == [
        load_signing_key(p, "ES256").kid for p in (first, second)
    ]
    for block in blocks:
        serialization.load_pem_private_key(block.encode(), password=None)


# --- check-config ------------------------------------------------------------------------------


def half_written(complete: str, then: str) -> str:
    """`complete`, then the first half of `then`: a writer that stopped half-way."""
    return complete + then[: len(then) // 2]


def jwt_config_file(tmp_path: Path, key_file: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        "client:\n  id: c\n  secret: client-secret-value\n  auth: jwt\n"
        f"identity:\n  hmac_key: {HMAC_KEY}\n"
        f"jwt:\n  issuer: {ISSUER}\n  signing_keys: [{{file: {key_file}}}]\n"
    )
    return path


def test_check_config_refuses_a_half_written_key_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key1, key2 = ec_pem(), ec_pem()
    key_file = tmp_path / "jwt-keys.pem"
    key_file.write_text(half_written(key2, key1))
    assert main(["check-config", "--config", str(jwt_config_file(tmp_path, key_file))]) == 2
    out, err = capsys.readouterr()
    assert f"jwt.signing_keys[0]: file:{key_file} has a PEM block that begins on line" in err
    assert "never ends" in err
    for pem in (key1, key2):
        for line in pem.splitlines()[1:-1]:
            assert line not in out + err
    key_file.write_text(key2 + key1)  # the whole bundle is fine
    assert main(["check-config", "--config", str(jwt_config_file(tmp_path, key_file))]) == 0


@pytest.mark.parametrize(
    "broken",
    [
        lambda k1, k2: k2 + "\nleft-over text\n",
        lambda k1, k2: k2 + k1.replace("-----END PRIVATE KEY-----", "-----END EC KEY-----"),
        lambda k1, k2: "# keys\n" + k2,
    ],
    ids=["trailing text", "labels differ", "text before"],
)
def test_every_kind_of_broken_bundle_is_a_config_problem(tmp_path: Path, broken: Any) -> None:
    key1, key2 = ec_pem(), ec_pem()
    key_file = tmp_path / "jwt-keys.pem"
    key_file.write_text(broken(key1, key2))
    data: dict[str, Any] = {
        "client": {"id": "c", "secret": "client-secret-value", "auth": "jwt"},
        "identity": {"hmac_key": HMAC_KEY},
        "jwt": {"issuer": ISSUER, "signing_keys": [{"file": str(key_file)}]},
    }
    with pytest.raises(ConfigError) as caught:
        build_config(data, {}, tmp_path)
    (problem,) = [p for p in caught.value.problems if p.startswith("jwt.signing_keys")]
    assert problem.startswith(f"jwt.signing_keys[0]: file:{key_file} has ")


# --- a running proxy in jwt mode ---------------------------------------------------------------


def reloads(proxy: RunningProxy, result: str) -> float:
    labels = {"secret": "jwt.signing_keys", "result": result}
    return proxy.metrics.registry.get_sample_value("gini_proxy_secret_reloads_total", labels) or 0


async def published_kids(proxy: RunningProxy) -> list[str]:
    async with proxy.client.get(proxy.admin_url + JWKS_PATH) as answer:
        return [key["kid"] for key in (await answer.json())["keys"]]


async def test_a_half_written_bundle_is_never_applied_and_both_keys_stay(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    key1, key2 = ec_pem(), ec_pem()
    volume = SecretVolume(tmp_path / "jwt-secret")
    volume.write(keys=key1 + key2)
    options = jwt_overrides(tmp_path / "unused", key1)
    options["jwt"]["signing_keys"] = [{"file": str(volume.path("keys"))}]
    proxy = await start_proxy(**options, reload_interval_seconds=0)
    sim.enable_jwt(JwtSettings(proxy.admin_url + JWKS_PATH, ISSUER))
    kids = [load_signing_key(pem, "ES256").kid for pem in (key1, key2)]
    assert await published_kids(proxy) == kids

    async def flow1() -> str:
        """Flow 1 through the proxy, verified by the simulator; the kid that signed it."""
        async with proxy.client.get(proxy.url + "/documents", headers=USER) as answer:
            assert answer.status == 200
        record = sim.state.requests_of("pay")[-1]
        token = dict(record.headers)["X-JWT-Authorization"].removeprefix("Bearer ")
        return str(jwt.get_unverified_header(token)["kid"])

    assert await flow1() == kids[0]
    reloader = proxy.services.reloader
    # Key 2 first, then the first half of key 1: the writer was interrupted.
    volume.write(keys=half_written(key2, key1))
    assert await reloader.reload() == {"jwt.signing_keys": "error"}
    assert await published_kids(proxy) == kids  # key 1's kid is still published
    assert await flow1() == kids[0]  # and key 1 still signs
    assert (reloads(proxy, "error"), reloads(proxy, "applied")) == (1, 0)
    # Cut right after a block's END (a shorter, whole file) is a real edit: applied.
    volume.write(keys=key2 + "\n" + key1)
    assert await reloader.reload() == {"jwt.signing_keys": "applied"}
    assert await published_kids(proxy) == kids[::-1]
    assert await flow1() == kids[1]


async def test_the_jwks_never_lists_a_key_from_a_broken_bundle_on_sighup_either(
    start_proxy: StartProxy, sim: GiniSimulator, tmp_path: Path
) -> None:
    """The same through `trigger`, which the SIGHUP handler calls: counted, nothing applied."""
    key1, key2 = ec_pem(), ec_pem()
    volume = SecretVolume(tmp_path / "jwt-secret")
    volume.write(keys=key1 + key2)
    options = jwt_overrides(tmp_path / "unused", key1)
    options["jwt"]["signing_keys"] = [{"file": str(volume.path("keys"))}]
    proxy = await start_proxy(**options, reload_interval_seconds=0)
    before = await published_kids(proxy)
    volume.write(keys=key2 + "\n-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\n")
    proxy.services.reloader.trigger()

    async def counted() -> bool:
        return reloads(proxy, "error") == 1

    await eventually(counted)
    assert reloads(proxy, "applied") == 0
    assert await published_kids(proxy) == before
