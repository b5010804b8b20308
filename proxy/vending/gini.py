"""The proxy's own calls to Gini: `/login`, User Center tokens and user creation.

Each call has bounded retries with full-jitter exponential backoff on connect failures,
timeouts, 429 and 5xx, within the upstream's retry budget and never into a pause Gini asked
for (`transport/protection`). They are safe to repeat: a second `/login` or password grant only
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

from proxy.credentials import GINI_JSON, Credentials, Probe
from proxy.errors import BadGateway, ProxyError, UpstreamRejected, UpstreamUnavailable
from proxy.log import current_request_id, hide
from proxy.upstream import PAY_API, USER_CENTER, Retry, Upstream
from proxy.vending.tokens import Token, lifetime_from

log = logging.getLogger("proxy.gini")

JSON = "application/json"
BACKOFF_BASE = 0.1
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Answers are parsed here, so never compressed (the User-Agent is the session's).
_COMMON_HEADERS = {"Accept-Encoding": "identity"}


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
    """Gini calls for token vending, on the shared upstream session, with the client
    credentials in force (`credentials.basic`, read per call)."""

    def __init__(
        self,
        upstream: Upstream,
        credentials: Credentials,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.upstream = upstream
        self.credentials = credentials
        self.pay_api = upstream.config.pay_api
        self.user_center = upstream.config.user_center
        self.max_retries = upstream.config.max_retries
        self.timeout = upstream.config.timeout_seconds
        self.clock = clock
        self.sleep = sleep

    async def derived_login(self, identifier: str) -> Token:
        """Flow 2: `POST {pay_api}/login` with Basic client auth and the derived identifier."""
        headers = {
            "Authorization": self.credentials.basic,
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
        headers = {"Authorization": self.credentials.basic, "Accept": JSON}
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
            "Authorization": self.credentials.basic,
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

    async def send_probe(self, probe: Probe) -> int:
        """The status Gini answers to a `Credentials.probe` (with retries, as every call)."""
        upstream = USER_CENTER if probe.user_center else PAY_API
        return (await self._call(upstream, probe.method, probe.url, probe.headers)).status

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
        guard = self.upstream.guards[upstream]
        attempt = 0
        while True:
            failure: Retry | None = None
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
            except Retry as failed:
                failure = failed
            else:
                if answer.status not in _RETRY_STATUSES:
                    if (
                        answer.status == 401
                        and headers.get("Authorization") == self.credentials.basic
                    ):
                        self.credentials.refused()  # a rotated secret may be waiting
                    return answer
                reason = "throttled" if answer.status == 429 else "status_5xx"
                self.upstream.metrics.upstream_error(upstream, reason)
                if attempt >= self.max_retries:
                    return answer
            # Never retry into a pause Gini asked for (nor sleep through it while a caller
            # waits), and only within the retry budget: past it the caller gets this failure.
            guard.check_pause()
            if not guard.spend_retry():
                if failure is None:
                    return answer
                raise failure.give_up()
            attempt += 1
            # Full jitter: concurrent retries spread out instead of arriving together.
            await self.sleep(random.uniform(0, BACKOFF_BASE * 2**attempt))  # noqa: S311
