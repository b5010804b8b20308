"""Named callers: `name:key` lines in `inbound_auth.keys` (proxy/config/inbound.py), the name on
the request context and in the access log (proxy/web/middleware.py, accesslog.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cli import main
from proxy.config import MIN_INBOUND_KEY_BYTES, build_config
from proxy.config.inbound import CALLER_NAME, reread_keys, split_keys
from proxy.config.reader import ConfigError
from proxy.config.secret import Secret
from proxy.log import Redactor, configure_logging

from .conftest import USER, RunningProxy, StartProxy, eventually, examples
from .secret_volume import SecretVolume

BILLING = "billing-key-0123456789abcdef"
MOBILE = "mobile:gw:key-with-colons-0123"  # named `mobile`, its key holds `:` itself
BARE = "bare-key-0123456789abcdef"
MINIMAL: dict[str, Any] = {
    "client": {"id": "c", "secret": "client-secret-value-4f1c2e"},
    "identity": {"hmac_key": "hmac-key-0123456789abcdef0123456789abcdef"},
}


def parse(text: str) -> list[tuple[str | None, str]]:
    return [(key.caller, key.value) for key in split_keys(Secret(text, "file:/k", Path("/k")))]


def problems(keys: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config({**MINIMAL, "inbound_auth": {"keys": keys}}, {}, Path("/"))
    return caught.value.problems


def test_named_and_bare_lines() -> None:
    text = f"# comment\nbilling-svc:{BILLING}\n  {BARE}  \n{MOBILE}\nops.team_2: {BILLING}x\n"
    assert parse(text) == [
        ("billing-svc", BILLING),
        (None, BARE),
        ("mobile", "gw:key-with-colons-0123"),
        ("ops.team_2", BILLING + "x"),
    ]
    # A first `:` after something that is not a name: the whole line is one bare key.
    assert parse("a/b:" + BILLING) == [(None, "a/b:" + BILLING)]
    assert parse("x" * 65 + ":" + BILLING) == [(None, "x" * 65 + ":" + BILLING)]


def test_ambiguous_lines_are_refused_naming_the_line_not_the_key() -> None:
    # `svc:` plus a short rest: an old bare key with `:` reads as named now, or a key is missing.
    found = problems(f"{BARE}\nsvc:short-one\n")
    assert any(
        p.startswith("inbound_auth.keys:") and "#2" in p and "name:key" in p for p in found
    ), found
    assert not any("short-one" in p for p in found)
    # One key under two names: which caller sent it could not be told.
    found = problems(f"a:{BILLING}\nb:{BILLING}\n")
    assert any("two caller names" in p and "#2" in p for p in found), found
    assert not any(BILLING in p for p in found)
    # The same key twice under one name (or bare twice) is harmless.
    twice = {**MINIMAL, "inbound_auth": {"keys": f"a:{BILLING}\na:{BILLING}\n"}}
    assert build_config(twice, {}, Path("/")).inbound_auth is not None


def test_reload_reads_names_by_the_same_rules(tmp_path: Path) -> None:
    assert [k.caller for k in reread_keys(tmp_path, f"svc:{BILLING}\n{BARE}\n")] == ["svc", None]
    with pytest.raises(ValueError, match="name:key") as caught:
        reread_keys(tmp_path, "svc:tiny\n")
    assert "tiny" not in str(caught.value)


def test_check_config_refuses_an_ambiguous_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keys").write_text(f"svc:{BILLING}\nother:abc\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        "client: {id: c, secret: client-secret-value-4f1c2e}\n"
        "identity: {hmac_key: hmac-key-0123456789abcdef0123456789abcdef}\n"
        "inbound_auth: {keys: {file: keys}}\n"
    )
    assert main(["check-config", "--config", str(config)]) == 2
    out, err = capsys.readouterr()
    assert "inbound_auth.keys" in out + err
    assert "name:key" in out + err
    assert BILLING not in out + err


names = st.from_regex(CALLER_NAME, fullmatch=True)
keys = st.text(
    st.characters(min_codepoint=33, max_codepoint=126), min_size=MIN_INBOUND_KEY_BYTES
).filter(lambda k: not k.startswith("#"))


@settings(max_examples=examples(200))
@given(name=names, key=keys)
def test_any_name_and_key_round_trip(name: str, key: str) -> None:
    assert parse(f"{name}:{key}") == [(name, key)]


@settings(max_examples=examples(200))
@given(key=keys)
def test_a_bare_key_is_named_only_when_it_reads_as_name_colon_key(key: str) -> None:
    ((name, value),) = parse(key)
    head, colon, rest = key.partition(":")
    if colon and CALLER_NAME.fullmatch(head):
        assert (name, value) == (head, rest)
    else:
        assert (name, value) == (None, key)


def access_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["logger"] == "proxy.access"]


async def status(proxy: RunningProxy, key: str) -> int:
    headers = {**USER, "X-Proxy-Key": key}
    async with proxy.client.get(proxy.url + "/documents", headers=headers) as response:
        await response.read()
        return response.status


async def test_the_access_log_names_the_caller(
    start_proxy: StartProxy, log_stream: io.StringIO, tmp_path: Path
) -> None:
    volume = SecretVolume(tmp_path / "secrets")
    volume.write(keys=f"billing:{BILLING}\n{BARE}\n")
    proxy = await start_proxy(
        inbound_auth={"keys": {"file": str(volume.path("keys"))}}, reload_interval_seconds=0.3
    )
    configure_logging("info", Redactor(proxy.config.secrets()), log_stream)
    assert await status(proxy, BILLING) == 200
    assert await status(proxy, BARE) == 200
    assert await status(proxy, "billing") == 401
    proxy.services.access_log.flush()
    assert [line["caller"] for line in access_lines(log_stream)] == ["billing", None, None]
    # A reload brings new names with the keys.
    volume.write(keys=f"payments:{BILLING}\n")

    async def renamed() -> bool:
        before = len(access_lines(log_stream))
        await status(proxy, BILLING)
        proxy.services.access_log.flush()
        return bool(access_lines(log_stream)[before]["caller"] == "payments")

    await eventually(renamed, within=3)
    assert await status(proxy, BARE) == 401
    assert BILLING not in log_stream.getvalue()
