"""What the proxy shows Gini and the egress proxy to prove who it is, held in one place.

`Credentials` owns:
- flow 1's authorizer, chosen once from `client.auth`: Basic client credentials with
  `X-User-Identifier`, or a per-user JWT from the signer;
- the Basic header of `/login` and the User Center;
- the egress proxy's `Proxy-Authorization`;
- the probe that proves a new client secret before it is swapped in (the reloader and `doctor`
  send the same one);
- the hook a 401 to the credentials in force calls: a rotated secret may be waiting.

The forwarder, `GiniClient` and `Upstream` read the values here on every call, so a reload puts
a new secret in force by swapping one reference (`use_client_secret`, `use_egress_password`).
Nothing here does I/O: the probe is a description that its caller sends.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Protocol

from proxy.config import Config
from proxy.config.reload import Verdict
from proxy.errors import ProxyError

PROBE_IDENTIFIER = "gini-auth-proxy-secret-probe"
"""The `X-User-Identifier` of the `/login` that tests client credentials. Real identifiers are
64 hex digits, so this one can never be a user's: the probe only ever reaches one Gini user of
its own."""
GINI_JSON = "application/vnd.gini.v1+json"


def basic_auth(user: str, password: str) -> str:
    """An HTTP Basic credentials value (RFC 7617, UTF-8)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class JwtAuthority(Protocol):
    """What flow 1 and a secret rotation need of the JWT signer (`signing.signer.JwtSigner`,
    which sits above this module)."""

    def header_for(self, identifier: str) -> str: ...

    def rejected(self, identifier: str, header: str) -> None: ...

    def use_client_secret(self, client_secret: str) -> None: ...


class Authorizer(Protocol):
    """Flow 1's credentials for one request, and what a 401 to them means."""

    def sign(self, headers: MutableMapping[str, str], identifier: str) -> None: ...

    def refused(self, identifier: str, headers: Mapping[str, str]) -> None: ...


@dataclass(frozen=True, slots=True)
class Probe:
    """One request that tests client credentials without using them for anything: a
    client-credentials grant at the User Center when flow 4 is configured (such a client is
    known to be enabled there), else a `/login` for PROBE_IDENTIFIER."""

    user_center: bool  # sent to the User Center, else to the Pay API
    method: str
    url: str
    headers: Mapping[str, str]
    what: str  # for people: what was asked


def verdict(status: int) -> Verdict:
    """What Gini's answer to a probe says about the credentials it carried."""
    if 200 <= status < 300:
        return "accepted"
    return "refused" if 400 <= status < 500 and status != 429 else "unavailable"


class Credentials:
    """The client and egress proxy credentials in force (see the module docstring)."""

    def __init__(self, config: Config, signer: JwtAuthority | None = None):
        client = config.client
        self.client_id = client.id
        self.basic = basic_auth(client.id, client.secret.value)
        self.signer = signer
        self.flow1: Authorizer = BasicAuthorizer(self)
        if client.auth == "jwt":
            if signer is None:
                raise ValueError("jwt mode needs the JWT signer")
            self.flow1 = JwtAuthorizer(self, signer)
        egress = config.upstream.egress_proxy
        self.egress_user = egress.username if egress is not None else None
        self.proxy_headers: dict[str, str] | None = None
        """Sent to the egress proxy: on the CONNECT, or with each plain-HTTP request."""
        if egress is not None and egress.username is not None:
            self.use_egress_password(egress.password.value if egress.password else "")
        self._pay_api = config.upstream.pay_api
        self._user_center = config.upstream.user_center
        self._probe_user_center = config.anonymous is not None
        self._on_refused: Callable[[], None] | None = None

    # -- the client secret ------------------------------------------------------------------

    def use_client_secret(self, secret: str) -> None:
        """Put a new `client.secret` in force: the Basic header, and the JWT claims."""
        self.basic = basic_auth(self.client_id, secret)
        if self.signer is not None:
            self.signer.use_client_secret(secret)

    def client_secret_forms(self, secret: str) -> tuple[str, ...]:
        """The forms of a client secret that must never be logged."""
        return (secret, self.basic_for(secret))

    def basic_for(self, secret: str) -> str:
        return basic_auth(self.client_id, secret)

    def probe(self, secret: str | None = None) -> Probe:
        """The probe for `secret` (default: the one in force)."""
        basic = self.basic if secret is None else self.basic_for(secret)
        if self._probe_user_center:
            url = f"{self._user_center}/oauth/token?grant_type=client_credentials"
            headers = {"Authorization": basic, "Accept": "application/json"}
            return Probe(True, "GET", url, headers, "client-credentials grant at the User Center")
        headers = {
            "Authorization": basic,
            "X-User-Identifier": PROBE_IDENTIFIER,
            "Accept": GINI_JSON,
        }
        what = f"/login for the probe identifier {PROBE_IDENTIFIER}"
        return Probe(False, "POST", f"{self._pay_api}/login", headers, what)

    async def verify(self, secret: str, send: Callable[[Probe], Awaitable[int]]) -> Verdict:
        """Ask Gini about a new secret before it is swapped in (`send` returns the status)."""
        try:
            return verdict(await send(self.probe(secret)))
        except ProxyError:
            return "unavailable"

    # -- Gini refused the credentials in force ----------------------------------------------

    def on_refused(self, hook: Callable[[], None]) -> None:
        """Call `hook` when Gini answers 401 to the client credentials in force."""
        self._on_refused = hook

    def refused(self) -> None:
        if self._on_refused is not None:
            self._on_refused()

    # -- the egress proxy -------------------------------------------------------------------

    def use_egress_password(self, password: str) -> None:
        """The next connection through the egress proxy carries this password."""
        self.proxy_headers = {"Proxy-Authorization": self.egress_basic(password)}

    def egress_basic(self, password: str) -> str:
        return basic_auth(self.egress_user or "", password)

    def egress_secret_forms(self, password: str) -> tuple[str, ...]:
        """The forms of an egress proxy password that must never be logged."""
        return (password, self.egress_basic(password))


class BasicAuthorizer:
    """Basic client credentials plus the derived identifier (the default `client.auth`)."""

    __slots__ = ("_credentials",)

    def __init__(self, credentials: Credentials):
        self._credentials = credentials

    def sign(self, headers: MutableMapping[str, str], identifier: str) -> None:
        headers["Authorization"] = self._credentials.basic
        headers["X-User-Identifier"] = identifier

    def refused(self, identifier: str, headers: Mapping[str, str]) -> None:
        self._credentials.refused()


class JwtAuthorizer:
    """A per-user JWT (`client.auth: jwt`); Gini's 401 drops that user's JWT, and may also mean
    that the client secret a claim carries was rotated."""

    __slots__ = ("_credentials", "_signer")

    def __init__(self, credentials: Credentials, signer: JwtAuthority):
        self._credentials = credentials
        self._signer = signer

    def sign(self, headers: MutableMapping[str, str], identifier: str) -> None:
        headers["X-JWT-Authorization"] = self._signer.header_for(identifier)

    def refused(self, identifier: str, headers: Mapping[str, str]) -> None:
        self._signer.rejected(identifier, headers["X-JWT-Authorization"])
        self._credentials.refused()
