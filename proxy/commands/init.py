"""`gini-auth-proxy init [DIR]`: a first real configuration, with freshly generated keys.

Writes `DIR/config.yaml` (a loopback sidecar whose store lives in `DIR/data/`) and the two
keys every deployment needs, `DIR/secrets/hmac-key` and `DIR/secrets/store-key`, readable by
the owner only. The Gini client credentials stay out of the files: the config reads them from
`$GINI_CLIENT_ID` and `$GINI_CLIENT_SECRET`. Nothing is overwritten without `force`.
"""

from __future__ import annotations

import base64
import os
import secrets
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from proxy import exitcodes

DEFAULT_DIR = "gini-proxy"
DEFAULT_PAY_API = "https://pay-api.gini.net"
DEFAULT_USER_CENTER = "https://user.gini.net"

_CONFIG_TEMPLATE = """\
# gini-auth-proxy: written by `gini-auth-proxy init`. docs/configuration.md explains every key.
# A sidecar on loopback: only processes on this machine (or in this pod) can reach it.
# Check it with: gini-auth-proxy check-config --config {config}

listen: "127.0.0.1:8080"                 # the proxy: your services call it instead of Gini
admin_listen: "127.0.0.1:9090"           # /metrics, /readyz...; 0.0.0.0:9090 for a kubelet
public_url: "http://127.0.0.1:8080"      # Gini URLs in answers are rewritten to this

upstream:
  pay_api: "{pay_api}"
  user_center: "{user_center}"

client:
  id: "${{GINI_CLIENT_ID}}"                # your Gini API client id, from the environment
  secret: "${{GINI_CLIENT_SECRET}}"        # its secret, from the environment (never in a file)

identity:
  header: "X-User-Id"
  hmac_key: {{file: secrets/hmac-key}}      # keep it forever: a new key means new Gini users

anonymous:                               # flow 4: POST /_proxy/tokens/anonymous
  email_domain: "example.com"            # domain of the generated Gini user names; use one you own

store:                                   # anonymous users' Gini credentials, encrypted
  url: "sqlite:///{store_db}"
  encryption_key: {{file: secrets/store-key}}  # 32 random bytes in base64

logging:
  level: "info"
  format: "json"                         # json (one object per line) or text (for a terminal)
"""


@dataclass(frozen=True, slots=True)
class InitPlan:
    """The files `init` writes, all under one folder."""

    folder: Path

    @property
    def config(self) -> Path:
        return self.folder / "config.yaml"

    @property
    def secrets_dir(self) -> Path:
        return self.folder / "secrets"

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def hmac_key(self) -> Path:
        return self.secrets_dir / "hmac-key"

    @property
    def store_key(self) -> Path:
        return self.secrets_dir / "store-key"

    def files(self) -> tuple[Path, ...]:
        return (self.config, self.hmac_key, self.store_key)


def render_config(plan: InitPlan, pay_api: str, user_center: str) -> str:
    """The config text; the store path is absolute, as `store.url` requires."""
    return _CONFIG_TEMPLATE.format(
        config=shlex.quote(str(plan.config)),
        pay_api=pay_api.rstrip("/"),
        user_center=user_center.rstrip("/"),
        store_db=(plan.data_dir / "store.db").resolve(),
    )


def new_hmac_key() -> str:
    """64 hex digits: 32 random bytes, twice the minimum `identity.hmac_key` accepts."""
    return secrets.token_hex(32)


def new_store_key() -> str:
    """32 random bytes in base64, the only form `store.encryption_key` accepts."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # mkdir's mode is reduced by the umask, and an existing folder keeps its own


def _write_private(path: Path, text: str) -> None:
    """Create (or replace) `path` as 0600 from the first byte: the key is never world-readable."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    temporary.replace(path)


def next_steps(plan: InitPlan) -> str:
    config = shlex.quote(str(plan.config))
    return f"""
Next steps:
  1. Give the proxy your Gini client credentials (they stay out of the files):
       export GINI_CLIENT_ID='your-client-id'
       export GINI_CLIENT_SECRET='your-client-secret'
  2. Check the configuration (exit 0, or 2 listing every problem):
       gini-auth-proxy check-config --config {config}
  3. Check DNS, TLS, the credentials, the clock and the store from this machine:
       gini-auth-proxy doctor --config {config}
  4. Run it:
       gini-auth-proxy serve --config {config}

Back up {shlex.quote(str(plan.secrets_dir))}: a lost hmac-key turns every user into a new \
Gini user, a lost store-key makes the stored anonymous users unreadable."""


def _bad_url(text: str) -> bool:
    parts = urlsplit(text)
    # The URL goes into a double-quoted YAML string: no quote or backslash may end it early.
    return (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(c in text for c in '"\\ ')
    )


def init(folder: str, pay_api: str, user_center: str, *, force: bool) -> int:
    """Write the config and keys; returns the exit code (CONFIG when it would overwrite)."""
    for option, url in (("--pay-api", pay_api), ("--user-center", user_center)):
        if _bad_url(url):
            print(f"error: {option} must be an http(s) URL, got {url!r}", file=sys.stderr)
            return exitcodes.CONFIG
    plan = InitPlan(Path(folder))
    existing = [path for path in plan.files() if path.exists()]
    if existing and not force:
        names = ", ".join(str(path) for path in existing)
        print(
            f"error: {names} already exist{'s' if len(existing) == 1 else ''}; "
            "nothing was written. Pass --force to replace them (a new hmac-key changes the "
            "identifier of every user).",
            file=sys.stderr,
        )
        return exitcodes.CONFIG
    try:
        _private_dir(plan.folder)
        _private_dir(plan.secrets_dir)
        _private_dir(plan.data_dir)
        _write_private(plan.hmac_key, new_hmac_key() + "\n")
        _write_private(plan.store_key, new_store_key() + "\n")
        _write_private(plan.config, render_config(plan, pay_api, user_center))
    except OSError as exc:
        print(
            f"error: cannot write {exc.filename or folder}: {exc.strerror or exc}", file=sys.stderr
        )
        return exitcodes.CONFIG
    verb = "Replaced" if existing else "Wrote"
    print(f"{verb} {plan.config}")
    print(f"{verb} {plan.hmac_key} and {plan.store_key} (mode 0600)")
    print(f"Created {plan.data_dir} for the store (mode 0700)")
    print(next_steps(plan))
    return exitcodes.OK
