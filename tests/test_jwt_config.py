"""`client.auth` and the `jwt` section: defaults, key checks against the algorithm, and every
problem reported at once without quoting key material. Also the RFC 7638 `kid`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cli import main
from proxy.config import build_config
from proxy.config.reader import ConfigError
from proxy.config.signing_keys import SigningKeyError, load_signing_key, thumbprint
from proxy.signing.signer import JwtSigner

from .jwt_support import ISSUER, ec_pem, rsa_pem, write_keys

BASE: dict[str, Any] = {
    "client": {"id": "my-client", "secret": "client-secret-value-4f1c2e"},
    "identity": {"hmac_key": "hmac-key-0123456789abcdef0123456789abcdef"},
}


def with_jwt(tmp_path: Path, *pems: str, auth: str = "jwt", **jwt: Any) -> dict[str, Any]:
    section = {"issuer": ISSUER, "signing_keys": write_keys(tmp_path / "keys", *pems), **jwt}
    return {**BASE, "client": {**BASE["client"], "auth": auth}, "jwt": section}


def problems(data: dict[str, Any], tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config(data, {}, tmp_path)
    return caught.value.problems


def test_basic_is_the_default_and_needs_no_jwt_section(tmp_path: Path) -> None:
    config = build_config(BASE, {}, tmp_path)
    assert config.client.auth == "basic"
    assert config.jwt is None


def test_jwt_defaults(tmp_path: Path) -> None:
    config = build_config(with_jwt(tmp_path, ec_pem()), {}, tmp_path)
    assert config.client.auth == "jwt"
    assert config.jwt is not None
    assert config.jwt.issuer == ISSUER
    assert config.jwt.algorithm == "ES256"
    assert config.jwt.lifetime_seconds == 300
    claims = config.jwt.claims
    assert (claims.user_identifier, claims.client_id) == ("x-user-identifier", "x-client-id")
    assert claims.client_secret is None
    # Signing keys are secrets: the log redactor knows them.
    assert config.jwt.signing_keys[0].value in config.secrets()


def test_jwt_mode_needs_the_jwt_section(tmp_path: Path) -> None:
    found = problems({**BASE, "client": {**BASE["client"], "auth": "jwt"}}, tmp_path)
    assert any(p.startswith("jwt:") and "required" in p for p in found)
    found = problems({**BASE, "client": {**BASE["client"], "auth": "oauth"}}, tmp_path)
    assert any(p.startswith("client.auth:") for p in found)


def test_every_jwt_problem_is_reported_at_once_without_key_material(tmp_path: Path) -> None:
    rsa_key, ec_key = rsa_pem(2048), ec_pem()
    weak = rsa_pem(1024)
    data = with_jwt(
        tmp_path,
        rsa_key,  # [0] RSA for ES256
        ec_pem(ec.SECP384R1()),  # [1] wrong curve
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----",  # [2]
        ec_key,  # [3] fine
        ec_key,  # [4] the same key twice
        lifetime_seconds=5,
        claims={"user_identifier": "exp", "client_id": "bad claim", "extra": 1},
        unknown=True,
    )
    data["jwt"]["signing_keys"].append({"file": str(tmp_path / "missing.pem")})  # [5]
    found = problems(data, tmp_path)
    expected = {
        "jwt.signing_keys[0]": "EC P-256",
        "jwt.signing_keys[1]": "P-256 curve",
        "jwt.signing_keys[2]": "PEM",
        "jwt.signing_keys[4]": "same key",
        "jwt.signing_keys[5]": "cannot read",
        "jwt.lifetime_seconds": "between",
        "jwt.claims.user_identifier": "registered claim",
        "jwt.claims.client_id": "claim name",
        "jwt.claims.extra": "unknown key",
        "jwt.unknown": "unknown key",
    }
    for path, words in expected.items():
        assert any(p.startswith(f"{path}:") and words in p for p in found), (path, found)
    assert not any(p.startswith("jwt.signing_keys[3]") for p in found)
    text = "\n".join(found)
    for pem in (rsa_key, ec_key, weak):
        body = pem.splitlines()[1]
        assert body not in text

    # RS256: EC keys and short RSA keys are refused, 2048 bits pass.
    found = problems(with_jwt(tmp_path / "rs", ec_key, weak, rsa_key, algorithm="RS256"), tmp_path)
    assert any(p.startswith("jwt.signing_keys[0]:") and "RSA" in p for p in found)
    assert any(p.startswith("jwt.signing_keys[1]:") and "2048 bits" in p for p in found)
    assert not any(p.startswith("jwt.signing_keys[2]") for p in found)
    found = problems(with_jwt(tmp_path / "hs", ec_key, algorithm="HS256"), tmp_path)
    assert any(p.startswith("jwt.algorithm:") for p in found)


def test_rs256_with_a_2048_bit_key_is_accepted(tmp_path: Path) -> None:
    config = build_config(with_jwt(tmp_path, rsa_pem(2048), algorithm="rs256"), {}, tmp_path)
    assert config.jwt is not None
    assert config.jwt.algorithm == "RS256"


def test_a_jwt_section_in_basic_mode_is_allowed(tmp_path: Path) -> None:
    """Keys can be published (and registered with Gini) before flow 1 switches to jwt."""
    config = build_config(with_jwt(tmp_path, ec_pem(), auth="basic"), {}, tmp_path)
    assert config.client.auth == "basic"
    assert config.jwt is not None


def test_check_config_lists_key_problems_and_no_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weak = rsa_pem(1024)
    keys = write_keys(tmp_path, weak)
    (tmp_path / "config.yaml").write_text(
        "client:\n  id: c\n  secret: client-secret-value\n  auth: jwt\n"
        "identity:\n  hmac_key: hmac-key-0123456789abcdef0123456789abcdef\n"
        f"jwt:\n  issuer: {ISSUER}\n  algorithm: RS256\n"
        f"  signing_keys: [{{file: {keys[0]['file']}}}]\n"
    )
    assert main(["check-config", "--config", str(tmp_path / "config.yaml")]) == 2
    out, err = capsys.readouterr()
    assert "jwt.signing_keys[0]" in err
    assert "at least 2048 bits, got 1024" in err
    assert weak.splitlines()[1] not in out + err


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # The example of RFC 7638, section 3.1: the RSA key and its published thumbprint.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_"
        "BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"
        "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI"
        "4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    members = {"e": "AQAB", "kty": "RSA", "n": n}
    assert thumbprint(members) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_loaded_keys_publish_public_members_only() -> None:
    ec_key = load_signing_key(ec_pem(), "ES256")
    assert set(ec_key.jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert ec_key.kid == thumbprint({k: ec_key.jwk[k] for k in ("crv", "kty", "x", "y")})
    rsa_key = load_signing_key(rsa_pem(2048), "RS256")
    assert set(rsa_key.jwk) == {"kty", "n", "e", "kid", "alg", "use"}
    with pytest.raises(SigningKeyError):
        load_signing_key(rsa_pem(2048), "ES256")


ROOT = Path(__file__).resolve().parent.parent


def test_the_examples_jwt_block_loads_when_uncommented(tmp_path: Path) -> None:
    """The commented `jwt` block of config.example.yaml is a working section as it stands."""
    lines = (ROOT / "config.example.yaml").read_text(encoding="utf-8").splitlines()
    first = lines.index("# jwt:")
    block = [lines[first][2:]]
    for line in lines[first + 1 :]:
        if not line.startswith("#   "):
            break
        block.append(line[2:])
    key = tmp_path / "jwt-signing.pem"
    key.write_text(ec_pem())
    text = "\n".join(block).replace("/var/run/secrets/gini-proxy/jwt-signing.pem", str(key))
    data = {**BASE, "client": {**BASE["client"], "auth": "jwt"}, **yaml.safe_load(text)}
    config = build_config(data, {}, tmp_path)
    assert config.jwt is not None
    defaults = build_config(with_jwt(tmp_path, ec_pem()), {}, tmp_path).jwt
    assert defaults is not None
    assert config.jwt.algorithm == defaults.algorithm
    assert config.jwt.lifetime_seconds == defaults.lifetime_seconds
    assert config.jwt.claims == defaults.claims


def test_the_docs_describe_every_jwt_key() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for key in (
        "client.auth", "jwt.issuer", "jwt.algorithm", "jwt.signing_keys", "jwt.lifetime_seconds",
        "jwt.claims.user_identifier", "jwt.claims.client_id", "jwt.claims.client_secret",
    ):  # fmt: skip
        assert f"`{key}`" in docs, key


_SIGNER_KEY = ec_pem()
_CLAIM_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_.:-]{0,20}", fullmatch=True).filter(
    lambda name: name not in {"iss", "sub", "aud", "exp", "nbf", "iat", "jti"}
)


@given(
    identifier=st.text(min_size=1, max_size=80),
    names=st.lists(_CLAIM_NAMES, min_size=2, max_size=2, unique=True),
)
@settings(max_examples=50)
def test_any_identifier_and_claim_names_round_trip(identifier: str, names: list[str]) -> None:
    """Whatever the identifier and the claim names, the JWT verifies against the published
    JWKS and carries exactly the configured claims."""
    with tempfile.TemporaryDirectory() as folder:
        data = with_jwt(
            Path(folder), _SIGNER_KEY, claims={"user_identifier": names[0], "client_id": names[1]}
        )
        config = build_config(data, {}, Path(folder))
    assert config.jwt is not None
    signer = JwtSigner(config.jwt, config.client)
    token = signer.header_for(identifier).removeprefix("Bearer ")
    jwks = jwt.PyJWKSet.from_dict(json.loads(signer.keys.jwks))
    kid = jwt.get_unverified_header(token)["kid"]
    claims = jwt.decode(token, jwks[kid].key, algorithms=["ES256"], issuer=ISSUER)
    assert claims[names[0]] == identifier
    assert claims[names[1]] == "my-client"
    assert set(claims) == {"iss", "iat", "exp", names[0], names[1]}
    assert signer.header_for(identifier) == "Bearer " + token  # cached
