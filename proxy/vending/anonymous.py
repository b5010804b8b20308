"""Flow 4: one anonymous Gini user per internal id, created once, logged in on demand.

The protocol that keeps "one id, one Gini user" across crashes and replicas:
1. claim a row (insert-first): every racer ends up with the same pending credentials;
2. create the user at Gini; 400 "exists" means an earlier attempt (a crash, another replica)
   already created exactly these credentials, so it counts as success;
3. mark the row active, then log in.
Credentials are durable before Gini ever sees them, so no token is handed out for a user the
store could forget. When the User Center no longer accepts a user (401 or 400
`invalid_grant`), new credentials replace the old ones by compare-and-swap and the user is
created again, as Gini's mobile SDKs do.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
import uuid

from proxy.errors import ProxyError, UpstreamRejected
from proxy.log import hide
from proxy.metrics import Metrics
from proxy.telemetry.scope import record_sub_action
from proxy.vending.gini import ClientTokenRejected, GiniClient, InvalidGrant, UserExists
from proxy.vending.stores import CredentialStore, StoredUser
from proxy.vending.tokens import Token, TokenCache

log = logging.getLogger("proxy.anonymous")

CLIENT_KEY = "client"


class AnonymousUsers:
    """Creates, remembers and logs in anonymous users; keys are derived identifiers."""

    def __init__(
        self,
        store: CredentialStore,
        gini: GiniClient,
        client_tokens: TokenCache,
        email_domain: str,
        metrics: Metrics,
    ):
        self.store = store
        self.gini = gini
        self.client_tokens = client_tokens
        self.email_domain = email_domain
        self.metrics = metrics

    def new_credentials(self) -> tuple[str, str]:
        """A fresh `<uuid4>@<domain>` username and a 256-bit random password."""
        return f"{uuid.uuid4()}@{self.email_domain}", secrets.token_urlsafe(32)

    async def login(self, key: str) -> Token:
        """A fresh access token for the anonymous user behind `key`, creating it if needed."""
        user = await self.store.get(key)
        if user is None:
            user = await self.store.claim(key, *self.new_credentials())
        hide(user.password)
        if user.state == "pending":
            user = await self._create(user)
        try:
            return await self.gini.password_login(user.email, user.password)
        except InvalidGrant:
            log.warning("the User Center no longer accepts an anonymous user; creating it anew")
        fresh = await self.store.replace(key, user.email, *self.new_credentials())
        hide(fresh.password)
        if fresh.state == "pending":
            fresh = await self._create(fresh)
        try:
            return await self.gini.password_login(fresh.email, fresh.password)
        except InvalidGrant:
            raise UpstreamRejected("The User Center refused a user it has just created.") from None

    async def forget(self, key: str) -> bool:
        """Delete the stored credentials (the Gini account is orphaned: there is no deletion)."""
        return await self.store.delete(key)

    async def _create(self, user: StoredUser) -> StoredUser:
        started = time.perf_counter()
        try:
            await self._create_at_gini(user)
        except UserExists:
            log.info("anonymous user already existed at Gini; using its stored credentials")
            # An earlier attempt (a crash, another replica) created exactly this user.
            record_sub_action("user.create", user.key, 400, started, "ok")
        except ProxyError as exc:
            record_sub_action("user.create", user.key, exc.status, started)
            raise
        else:
            self.metrics.anonymous_users_created.inc()
            record_sub_action("user.create", user.key, 201, started)
        await self.store.activate(user.key, user.email)
        return dataclasses.replace(user, state="active")

    async def _create_at_gini(self, user: StoredUser) -> None:
        for attempt in (1, 2):
            token = await self.client_token()
            try:
                await self.gini.create_user(user.email, user.password, token.access_token)
            except ClientTokenRejected:
                # The cached client token was revoked or expired early: fetch one more once,
                # and drop it for the whole fleet (only if no replica has replaced it yet).
                await self.client_tokens.drop(CLIENT_KEY, token.access_token)
                if attempt == 2:
                    raise UpstreamRejected from None
            else:
                return

    async def client_token(self) -> Token:
        token, source = await self.client_tokens.get_sourced(CLIENT_KEY, self.gini.client_token)
        self.metrics.token_issued("client", source)
        return token
