"""`check-config` catches what `serve` would trip on: listeners that cannot both bind, typos
(with a suggestion), YAML errors (with the parser's reason and line), bad values (with the
variable they came from) and `upstream.tls` that would never be used. All at once, exit 2."""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import exitcodes
from proxy.cli import main
from proxy.config import Address, ConfigError, build_config, load_config
from proxy.config.crosscheck import listeners_collide
from proxy.config.parse import _TOP_KEYS

BASE: dict[str, Any] = {
    "client": {"id": "my-client", "secret": "client-secret-value-4f1c2e"},
    "identity": {"hmac_key": "hmac-key-0123456789abcdef0123456789abcdef"},
}
TMP = Path("/nonexistent")  # base folder: nothing here reads a relative file


def problems(data: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    try:
        build_config({**BASE, **data}, env or {}, TMP)
    except ConfigError as exc:
        return exc.problems
    return []


# --- listeners -------------------------------------------------------------------------------


@given(port=st.integers(1, 65535))
def test_listen_and_admin_listen_on_one_port_is_a_problem(port: int) -> None:
    found = problems({"listen": f"127.0.0.1:{port}", "admin_listen": f"0.0.0.0:{port}"})
    assert len(found) == 1
    assert found[0].startswith("admin_listen: must differ from listen")
    assert f"share port {port}" in found[0]
    assert problems({"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.1:{port}"})
    assert problems({"listen": f"localhost:{port}", "admin_listen": f"127.0.0.1:{port}"})
    # Two loopback addresses, or two ports, are two listeners that both bind.
    assert not problems({"listen": f"127.0.0.1:{port}", "admin_listen": f"127.0.0.2:{port}"})
    other = port % 65535 + 1
    assert not problems({"listen": f"127.0.0.1:{port}", "admin_listen": f"0.0.0.0:{other}"})


def test_port_0_never_collides() -> None:
    assert not problems({"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"})


def _binds_after(first: Address, second: Address) -> bool:
    """What the kernel says, with the socket options aiohttp uses (SO_REUSEADDR)."""
    sockets: list[socket.socket] = []
    try:
        for address in (first, second):
            family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address.host, address.port))
            sock.listen()
    except OSError:
        return False
    finally:
        for sock in sockets:
            sock.close()
    return True


def _ipv6() -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        return True
    return False


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.2"),
        ("0.0.0.0", "127.0.0.1"),
        ("127.0.0.1", "0.0.0.0"),
        ("::", "127.0.0.1"),
        ("::1", "127.0.0.1"),
        ("0.0.0.0", "::1"),
    ],
)
def test_the_collision_rule_matches_the_kernel(first: str, second: str) -> None:
    if ":" in first + second and not _ipv6():
        pytest.skip("no IPv6 on this machine")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    a, b = Address(first, port), Address(second, port)
    assert listeners_collide(a, b) == (not _binds_after(a, b))


# --- unknown keys ------------------------------------------------------------------------------


@given(st.sampled_from(_TOP_KEYS), st.data())
def test_a_key_missing_one_letter_is_suggested(key: str, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(key) - 1))
    typo = key[:index] + key[index + 1 :]
    found = problems({typo: 1})
    assert f"{typo}: unknown key; did you mean {key!r}?" in found


def test_a_nested_typo_is_suggested_from_its_own_level() -> None:
    found = problems({"upstream": {"conect_timeout_seconds": 1}})
    assert found == [
        "upstream.conect_timeout_seconds: unknown key; did you mean 'connect_timeout_seconds'?"
    ]


def test_a_key_like_nothing_lists_the_known_ones() -> None:
    (found,) = problems({"tokens": {"zzz": 1}})
    assert (
        found == "tokens.zzz: unknown key (known here: max_cached, refresh_before_expiry_seconds)"
    )


# --- YAML errors ----------------------------------------------------------------------------

_SCALARS = st.one_of(
    st.integers(-1000, 1000), st.booleans(), st.text("abcdefgh0123", min_size=1, max_size=12)
)
_KEYS = st.text("abcdefghij_", min_size=1, max_size=10)
_DOCS = st.dictionaries(
    _KEYS,
    st.one_of(_SCALARS, st.dictionaries(_KEYS, _SCALARS, min_size=1, max_size=4)),
    min_size=2,
    max_size=8,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=_DOCS, data=st.data())
def test_a_tab_is_reported_with_the_parsers_reason_and_its_line(
    tmp_path: Path, document: dict[str, Any], data: st.DataObject
) -> None:
    lines = yaml.safe_dump(document, default_flow_style=False).splitlines()
    index = data.draw(st.integers(1, len(lines) - 1))
    lines[index] = "\t" + lines[index]
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path} is not valid YAML at line {index + 1}, column 1: ")
    assert "found character '\\t' that cannot start any token" in problem
    assert "spaces, not tabs" in problem


def test_an_unclosed_bracket_names_where_it_began(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("listen: 127.0.0.1:8080\nupstream: [a, b\nclient: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    (problem,) = caught.value.problems
    assert "expected ',' or ']'" in problem
    assert "flow sequence that began at line 2, column 11" in problem


def test_a_yaml_error_never_quotes_the_line(tmp_path: Path) -> None:
    """The line may hold an inline secret."""
    path = tmp_path / "config.yaml"
    path.write_text('client:\n  secret: "s3cr3t-value\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert "s3cr3t" not in caught.value.problems[0]


# --- values and their sources ---------------------------------------------------------------


@given(st.text(max_size=20).filter(lambda t: not (t.strip().isascii() and t.strip().isdigit())))
def test_a_bad_number_from_a_variable_names_the_variable_and_the_value(text: str) -> None:
    found = problems({"max_body_bytes": "${MAX_BODY}"}, {"MAX_BODY": text})
    assert found == [f"max_body_bytes: must be an integer, got $MAX_BODY = {json.dumps(text)}"]


def test_a_bad_value_inside_a_longer_string_shows_the_template() -> None:
    found = problems({"upstream": {"timeout_seconds": "${T}s"}}, {"T": "5"})
    assert found == ['upstream.timeout_seconds: must be a number, got "5s" (from "${T}s")']


def test_an_out_of_range_value_from_a_variable_names_it() -> None:
    found = problems({"max_connections": "${MAX_CONN}"}, {"MAX_CONN": "0"})
    assert found == ["max_connections: must be between 1 and 1000000, got $MAX_CONN = 0"]


def test_a_literal_bad_value_is_quoted() -> None:
    assert problems({"logging": {"access_log": "yes"}}) == [
        'logging.access_log: must be true or false, got "yes"'
    ]


# --- upstream.tls --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def test_upstream_tls_with_only_http_upstreams_is_a_problem(ca_file: Path) -> None:
    upstream = {
        "pay_api": "http://127.0.0.1:1",
        "user_center": "http://127.0.0.1:2",
        "tls": {"ca_file": str(ca_file)},
    }
    (found,) = problems({"upstream": upstream})
    assert found.startswith("upstream.tls: is set but upstream.pay_api and upstream.user_center")
    upstream["user_center"] = "https://127.0.0.1:2"
    assert problems({"upstream": upstream}) == []
    # An empty section (as the example config has it) is no section.
    assert (
        problems({"upstream": {"pay_api": "http://x", "user_center": "http://y", "tls": {}}}) == []
    )


# --- all together, from the command line -----------------------------------------------------


def test_check_config_reports_every_problem_at_once(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    ca_file: Path,
) -> None:
    monkeypatch.setenv("MAX_BODY", "10MiB")
    path = tmp_path / "config.yaml"
    config = {
        **BASE,
        "listen": "127.0.0.1:8080",
        "admin_listen": "127.0.0.1:8080",
        "max_body_bytes": "${MAX_BODY}",
        "upstream": {
            "pay_api": "http://a",
            "user_center": "http://b",
            "tls": {"ca_file": str(ca_file)},
        },
        "loging": {"level": "info"},
    }
    path.write_text(yaml.safe_dump(config))
    assert main(["check-config", "--config", str(path)]) == exitcodes.CONFIG
    err = capsys.readouterr().err
    assert "admin_listen: must differ from listen" in err
    assert "loging: unknown key; did you mean 'logging'?" in err
    assert 'max_body_bytes: must be an integer, got $MAX_BODY = "10MiB"' in err
    assert "upstream.tls: is set but" in err
