"""Every configuration the docs show passes `check-config`, so an example cannot rot.

What is checked: `config*.example.yaml` at the top of the repository, and every ```yaml block
in docs/*.md whose top-level keys are config keys (Kubernetes manifests and Kustomize snippets
in the same docs are recognised by their keys and left to tests/test_deploy.py, which renders
the real overlays and runs their configs through `check-config`).

How: the real command, `gini-auth-proxy check-config --config FILE` (`proxy.cli.main`, in
process), on a file written to a tmp folder. Three things are supplied there, and only these:

- A block that is a fragment rather than a whole config (most docs show one section) is
  deep-merged over `BASE`, the smallest valid config, so it is judged in a real context.
- Secrets: every `{file: PATH}` is pointed at a tmp file, and every `{env: NAME}` /
  `${NAME}` without a default is set in the environment, holding a placeholder of the shape
  the key needs (`PLACEHOLDERS`, by the secret's key). A secret of a key not in the table
  fails the test, naming the key.
- TLS files named by `upstream.tls` are replaced by real PEM files (trustme).

A `<placeholder>` written in a doc's example is replaced from `DOC_PLACEHOLDERS`; an unknown
one fails. Nothing else is changed, so a misspelt key, a wrong type or a value out of range in
a doc fails here with check-config's own message.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from proxy import cli

ROOT = Path(__file__).resolve().parents[1]
BASE: dict[str, Any] = {
    "upstream": {"pay_api": "https://pay-api.gini.net", "user_center": "https://user.gini.net"},
    "client": {"id": "docs-client", "secret": "docs-client-secret"},
    "identity": {"hmac_key": "ab" * 32},
}
PLACEHOLDERS: dict[str, str] = {
    "client.secret": "docs-client-secret",
    "identity.hmac_key": "cd" * 32,
    "store.encryption_key": base64.b64encode(b"k" * 32).decode(),
    "store.password": "docs-db-password",
    "inbound_auth.keys": "docs-inbound-key-0123456789\n",
    "upstream.egress_proxy.password": "docs-egress-password",
    "tracing.headers.X-Collector-Token": "docs-collector-token",
}
ENV_PLACEHOLDERS: dict[str, str] = {"GINI_CLIENT_ID": "docs-client"}
DOC_PLACEHOLDERS: dict[str, str] = {"<backend>": "memory"}
# Top-level keys of a config (docs/configuration.md); a block with none of them is not one.
CONFIG_KEYS = frozenset(
    {
        "listen", "admin_listen", "public_url", "upstream", "client", "identity", "anonymous",
        "store", "tokens", "shutdown_grace_seconds", "drain_delay_seconds", "max_body_bytes",
        "max_rewrite_bytes", "reload_interval_seconds", "client_timeouts", "max_connections",
        "allow_unauthenticated_network", "response_cache", "logging", "inbound_auth", "jwt",
        "tracing", "audit",
    }
)  # fmt: skip
BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def _doc_blocks() -> Iterator[tuple[str, str]]:
    for doc in sorted((ROOT / "docs").glob("*.md")):
        text = doc.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            yield f"{doc.relative_to(ROOT)}:{line}", match.group(1)


def _is_config(data: Any) -> bool:
    return isinstance(data, dict) and bool(CONFIG_KEYS & set(data))


def _merge(base: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in fragment.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _placeholder(key: str) -> str:
    if key not in PLACEHOLDERS:
        pytest.fail(f"no placeholder for the secret {key!r}: add one to PLACEHOLDERS")
    return PLACEHOLDERS[key]


def _supply(node: Any, key: str, folder: Path, env: dict[str, str]) -> Any:
    """`node` with its secrets and TLS files pointed at placeholders in `folder`."""
    if isinstance(node, dict) and set(node) == {"file"}:
        path = folder / f"secret-{len(list(folder.iterdir()))}"
        path.write_text(_placeholder(key), encoding="utf-8")
        return {"file": str(path)}
    if isinstance(node, dict) and set(node) == {"env"}:
        env[str(node["env"])] = _placeholder(key)
        return node
    if isinstance(node, dict):
        if key == "upstream.tls":
            return _tls_files(node, folder)
        return {k: _supply(v, f"{key}.{k}" if key else k, folder, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_supply(item, key, folder, env) for item in node]
    return node


def _tls_files(tls: dict[str, Any], folder: Path) -> dict[str, Any]:
    ca = trustme.CA()
    client = ca.issue_cert("proxy.example")
    files = {
        "ca_file": ca.cert_pem.bytes(),
        "client_cert_file": client.cert_chain_pems[0].bytes(),
        "client_key_file": client.private_key_pem.bytes(),
    }
    supplied = dict(tls)
    for name, content in files.items():
        if tls.get(name) is not None:
            (folder / name).write_bytes(content)
            supplied[name] = str(folder / name)
    return supplied


def _check(
    data: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    env: dict[str, str] = {}
    supplied = _supply(data, "", secrets, env)
    text = yaml.safe_dump(supplied, sort_keys=False)
    for name, default in ENV_REFERENCE.findall(text):
        if not default:
            if name not in ENV_PLACEHOLDERS:
                pytest.fail(f"no placeholder for ${{{name}}}: add one to ENV_PLACEHOLDERS")
            env[name] = ENV_PLACEHOLDERS[name]
    for name in {name for name, _ in ENV_REFERENCE.findall(text)} - set(env):
        monkeypatch.delenv(name, raising=False)  # its default applies, as on a clean machine
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "config.yaml"
    config.write_text(text, encoding="utf-8")
    code = cli.main(["check-config", "--config", str(config)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "configuration is valid" in out.out


EXAMPLES = sorted(ROOT.glob("config*.example.yaml"))


def _fill(where: str, block: str) -> str:
    """The block with its `<placeholders>` filled in from DOC_PLACEHOLDERS."""
    for placeholder in re.findall(r"<[a-z_ -]+>", block):
        if placeholder not in DOC_PLACEHOLDERS:
            pytest.fail(f"{where}: unknown placeholder {placeholder}: add it to DOC_PLACEHOLDERS")
        block = block.replace(placeholder, DOC_PLACEHOLDERS[placeholder])
    return block


DOC_CONFIGS = [
    (where, block)
    for where, block in _doc_blocks()
    if _is_config(yaml.safe_load(re.sub(r"<[a-z_ -]+>", "x", block)))
]


def test_the_examples_and_doc_blocks_are_found() -> None:
    # Guards against a check that passes because it found nothing.
    assert [path.name for path in EXAMPLES] == [
        "config.example.yaml",
        "config.network.example.yaml",
    ]
    assert sum(where.startswith("docs/configuration.md") for where, _ in DOC_CONFIGS) >= 2
    assert len(DOC_CONFIGS) >= 8


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_an_example_config_passes_check_config(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    _check(data, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize(("where", "block"), DOC_CONFIGS, ids=[w for w, _ in DOC_CONFIGS])
def test_a_config_block_of_the_docs_passes_check_config(
    where: str, block: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    fragment = yaml.safe_load(_fill(where, block))
    whole = {"client", "identity"} <= set(fragment)
    _check(fragment if whole else _merge(BASE, fragment), tmp_path, monkeypatch, capsys)


def test_a_broken_block_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    # The check can fail: a misspelt key in a fragment is reported by check-config.
    with pytest.raises(AssertionError, match="ttl_second"):
        _check(
            _merge(BASE, {"response_cache": {"routes": ["/x"], "ttl_second": 5}}),
            tmp_path,
            monkeypatch,
            capsys,
        )
