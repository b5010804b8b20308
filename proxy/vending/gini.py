"""The proxy's own calls to Gini: `/login`, User Center tokens and user creation.

Each call has bounded retries with full-jitter exponential backoff on connect failures,
timeouts, 429 and 5xx. They are safe to repeat: a second `/login` or password grant only
yields another token, and a repeated user creation answers 400 "exists", which the anonymous
flow already treats as "created" for credentials it stored first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from proxy import __version__
from proxy.errors import BadGateway, ProxyError, UpstreamRejected, UpstreamUnavailable
from proxy.log import current_request_id, hide
from proxy.upstream import PAY_API, USER_CENTER, Retry, Upstream
from proxy.vending.tokens import Token, lifetime_from

log = logging.getLogger("proxy.gini")

JSON = "application/json"
GINI_JSON = "application/vnd.gini.v1+json"
BACKOFF_BASE = 0.1
PROBE_IDENTIFIER = "gini-auth-proxy-secret-probe"
"""The `X-User-Identifier` of the `/login` that tests a new client secret. Real identifiers are
64 hex digits, so this one can never be a user's: the probe only ever reaches one Gini user of
its own."""
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Answers are parsed here, so never compressed; and the proxy says who it is.
_COMMON_HEADERS = {"Accept-Encoding": "identity", "User-Agent": f"gini-auth-proxy/{__version__}"}


class InvalidGrant(Exception):
    """The User Center refused a password login: the user is gone or its password is wrong."""


class UserExists(Exception):
    """`POST /api/users` answered 400: the email is taken (or, for our uuid emails, ours)."""


class ClientTokenRejected(Exception):
    """The client token was refused (expired early or revoked): fetch a new one and retry."""


@dataclass(frozen=True, slots=True)
class Reply:
    """Gini's answer to one of the proxy's own calls, read whole."""

    status: int
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class GiniClient:
    """Gini calls for token vending, on the shared upstream session."""

    def __init__(
        self,
        upstream: Upstream,
        basic: str,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.upstream = upstream
        self.basic = basic
        self.pay_api = upstream.config.pay_api
        self.user_center = upstream.config.user_center
        self.max_retries = upstream.config.max_retries
        self.timeout = upstream.config.timeout_seconds
        self.clock = clock
        self.sleep = sleep
        # Called when Gini answers 401 to the client secret in use (a rotation may be due).
        self.on_client_refused: Callable[[], None] | None = None

    async def derived_login(self, identifier: str) -> Token:
        """Flow 2: `POST {pay_api}/login` with Basic client auth and the derived identifier."""
        headers = {
            "Authorization": self.basic,
            "X-User-Identifier": identifier,
            "Accept": GINI_JSON,
        }
        answer = await self._call(PAY_API, "POST", f"{self.pay_api}/login", headers)
        if answer.status != 200:
            raise self._refused(answer, "Gini refused to log in the derived user")
        return self._token(answer)

    async def client_token(self) -> Token:
        """User Center client-credentials grant (GET, as the iOS SDK does)."""
        url = f"{self.user_center}/oauth/token?grant_type=client_credentials"
        headers = {"Authorization": self.basic, "Accept": JSON}
        answer = await self._call(USER_CENTER, "GET", url, headers)
        if answer.status != 200:
            raise self._refused(answer, "the User Center refused the client credentials")
        return self._token(answer)

    async def create_user(self, email: str, password: str, client_token: str) -> None:
        """`POST /api/users`; raises UserExists on 400 and ClientTokenRejected on 401."""
        headers = {
            "Authorization": f"Bearer {client_token}",
            "Accept": JSON,
            "Content-Type": JSON,
        }
        body = json.dumps({"email": email, "password": password}).encode()
        answer = await self._call(
            USER_CENTER, "POST", f"{self.user_center}/api/users", headers, body
        )
        if answer.status == 201:
            return
        if answer.status == 400:
            raise UserExists
        if answer.status == 401:
            raise ClientTokenRejected
        raise self._refused(answer, "the User Center refused to create a user")

    async def password_login(self, email: str, password: str) -> Token:
        """Password grant; InvalidGrant on 401 or 400 `invalid_grant` (as the SDKs read it)."""
        url = f"{self.user_center}/oauth/token?grant_type=password"
        headers = {
            "Authorization": self.basic,
            "Accept": JSON,
            "Content-Type": "application/x-www-form-urlencoded",
        }
        form = urlencode({"username": email, "password": password}).encode()
        answer = await self._call(USER_CENTER, "POST", url, headers, form)
        if answer.status == 200:
            return self._token(answer)
        body = answer.json()
        if answer.status == 401 or (
            answer.status == 400
            and isinstance(body, Mapping)
            and body.get("error") == "invalid_grant"
        ):
            raise InvalidGrant
        raise self._refused(answer, "the User Center refused the password login")

    async def probe_client_secret(self, basic: str, via_user_center: bool) -> int:
        """The status Gini answers to the client credentials `basic`, without using them for
        anything: a client-credentials grant, or a `/login` for PROBE_IDENTIFIER."""
        if via_user_center:
            url = f"{self.user_center}/oauth/token?grant_type=client_credentials"
            headers = {"Authorization": basic, "Accept": JSON}
            return (await self._call(USER_CENTER, "GET", url, headers)).status
        headers = {
            "Authorization": basic,
            "X-User-Identifier": PROBE_IDENTIFIER,
            "Accept": GINI_JSON,
        }
        return (await self._call(PAY_API, "POST", f"{self.pay_api}/login", headers)).status

    def _token(self, answer: Reply) -> Token:
        body = answer.json()
        access = body.get("access_token") if isinstance(body, Mapping) else None
        if not isinstance(access, str) or not access:
            raise BadGateway("Gini answered without an access token.")
        hide(access)
        return Token(access, self.clock() + lifetime_from(body.get("expires_in")))

    @staticmethod
    def _refused(answer: Reply, what: str) -> ProxyError:
        if 400 <= answer.status < 500 and answer.status != 429:
            log.error("%s", what, extra={"status": answer.status})
            return UpstreamRejected()
        log.warning("%s: Gini is failing", what, extra={"status": answer.status})
        return UpstreamUnavailable()

    async def _call(
        self,
        upstream: str,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Any = None,
    ) -> Reply:
        """One call with retries; returns the final answer or raises the contract error."""
        headers = {**headers, **_COMMON_HEADERS}
        request_id = current_request_id()
        if request_id is not None:  # the request that needed this call, for Gini support
            headers["X-Request-Id"] = request_id
        attempt = 0
        while True:
            try:
                async with self.upstream.call(
                    upstream,
                    method,
                    url,
                    headers=headers,
                    data=body,
                    deadline=self.timeout,
                    retry=attempt < self.max_retries,
                ) as call:
                    answer = Reply(call.response.status, await call.response.read())
            except Retry:
                pass
            else:
                if answer.status not in _RETRY_STATUSES:
                    if (
                        answer.status == 401
                        and self.on_client_refused is not None
                        and headers.get("Authorization") == self.basic
                    ):
                        self.on_client_refused()
                    return answer
                reason = "throttled" if answer.status == 429 else "status_5xx"
                self.upstream.metrics.upstream_error(upstream, reason)
                if attempt >= self.max_retries:
                    return answer
            attempt += 1
            # Full jitter: concurrent retries spread out instead of arriving together.
            await self.sleep(random.uniform(0, BACKOFF_BASE * 2**attempt))  # noqa: S311
