"""`upstream.egress_proxy`: the forward proxy every call to Gini goes through.

HTTPS upstreams are tunnelled with CONNECT, so the egress proxy sees host names, never the
requests. Credentials may come from the `username`/`password` keys or from the URL itself
(`url: "${HTTPS_PROXY:-}"` with `http://user:pass@host:3128`); either way the password is a
`Secret`, and the URL kept in the config never holds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from proxy.config.reader import Reader
from proxy.config.secret import Secret


@dataclass(frozen=True, slots=True)
class EgressProxyConfig:
    url: str  # scheme://host:port, credentials removed
    username: str | None = None
    password: Secret | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80


def parse_egress_proxy(r: Reader, data: Mapping[str, Any]) -> EgressProxyConfig | None:
    """Read `upstream.egress_proxy`; an empty `url` (an unset `${HTTPS_PROXY:-}`) means none."""
    path = "upstream.egress_proxy"
    d = r.section(data, "egress_proxy", path, ("url", "username", "password"))
    if d is None:
        return None
    text = r.string(d, "url", f"{path}.url", "")
    if not text:
        return None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        # Never quote the URL back: it may carry a password.
        r.problem(f"{path}.url", "is not a valid URL (percent-encode special characters)")
        return None
    if parts.scheme != "http" or not parts.hostname:
        r.problem(f"{path}.url", "must be http://HOST:PORT (the proxy is spoken to in plain HTTP)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        r.problem(f"{path}.url", "must not contain a path, query or fragment")
    username = r.string(d, "username", f"{path}.username", "") or None
    password = r.secret(d, "password", f"{path}.password") if d.get("password") else None
    if parts.username is not None or parts.password is not None:
        if username is not None or password is not None:
            r.problem(path, "give credentials either in the url or as username/password, not both")
        username = unquote(parts.username or "") or None
        if parts.password:
            password = Secret(unquote(parts.password), f"{path}.url")
    if password is not None and username is None:
        r.problem(f"{path}.username", "is required when a password is set")
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    netloc = f"{shown}:{port}" if port is not None else shown
    return EgressProxyConfig(urlunsplit(("http", netloc, "", "", "")), username, password)
