"""GiniSimulator: the Pay API and the User Center as two real HTTP servers on loopback."""

from __future__ import annotations

import ssl
from types import TracebackType
from typing import Self

from aiohttp import web

from proxy.sandbox.common import SimulatorConfig, base_url
from proxy.sandbox.jwt_auth import JwtSettings, JwtVerifier
from proxy.sandbox.pay_api import create_pay_api_app
from proxy.sandbox.state import SimulatorState
from proxy.sandbox.user_center import create_user_center_app

# Short, so closing a simulator with a stalled request in flight does not hang a test run.
SHUTDOWN_TIMEOUT = 1.0


class GiniSimulator:
    """A faithful-enough Gini (Pay API + User Center) for tests and the ``demo`` command.

    Port 0 picks an ephemeral port; the URLs are known once ``start()`` returned. With an
    ``ssl_context`` both listeners serve HTTPS (tests use one from a CA they make, and may
    set ``verify_mode = CERT_REQUIRED`` to demand a client certificate).
    """

    def __init__(
        self,
        *,
        client_id: str = "sim-client",
        # A public, well-known sandbox credential, not a secret.
        client_secret: str = "sim-secret",  # noqa: S107
        token_lifetime: int = 3599,
        client_token_lifetime: int = 43199,
        host: str = "127.0.0.1",
        pay_api_port: int = 0,
        user_center_port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = SimulatorConfig(
            client_id, client_secret, token_lifetime, client_token_lifetime
        )
        self.state = SimulatorState()
        self._host = host
        self._ports = (pay_api_port, user_center_port)
        self._runners: list[web.AppRunner] = []
        self.ssl_context = ssl_context

    @property
    def client_id(self) -> str:
        """The client id the simulator accepts."""
        return self.config.client_id

    @property
    def client_secret(self) -> str:
        """The client secret the simulator accepts."""
        return self.config.client_secret

    @property
    def pay_api_url(self) -> str:
        """Base URL of the Pay API, without trailing slash."""
        return self._require_started(self.config.pay_api_url)

    @property
    def user_center_url(self) -> str:
        """Base URL of the User Center, without trailing slash."""
        return self._require_started(self.config.user_center_url)

    def accept_client_secrets(self, *secrets: str) -> None:
        """Accept exactly these client secrets from now on (a rotation: old, both, new)."""
        if not secrets:
            raise ValueError("at least one client secret must be accepted")
        self.state.client_secrets = frozenset(secrets)

    def _require_started(self, url: str) -> str:
        if not url:
            raise RuntimeError("GiniSimulator is not started")
        return url

    def enable_jwt(self, settings: JwtSettings) -> JwtVerifier:
        """Accept `X-JWT-Authorization` on the Pay API, verified against `settings.jwks_url`
        (the backend's JWKS, fetched as Gini does). Calling it again replaces the settings."""
        verifier = self.config.jwt
        if verifier is None:
            verifier = self.config.jwt = JwtVerifier(settings, self.client_id, self.client_secret)
        else:  # keep its HTTP session; forget the keys fetched under the old settings
            verifier.settings = settings
            verifier.cache.keys, verifier.cache.fetched_at = {}, float("-inf")
        return verifier

    async def start(self) -> None:
        """Bind both listeners and start serving."""
        if self._runners:
            raise RuntimeError("GiniSimulator is already started")
        apps = (
            create_pay_api_app(self.state, self.config),
            create_user_center_app(self.state, self.config),
        )
        urls: list[str] = []
        try:
            for app, port in zip(apps, self._ports, strict=True):
                # handler_cancellation: a client that goes away cancels its handler, which
                # is what state.cancelled_requests counts.
                runner = web.AppRunner(
                    app,
                    handler_cancellation=True,
                    shutdown_timeout=SHUTDOWN_TIMEOUT,
                    access_log=None,
                )
                await runner.setup()
                self._runners.append(runner)
                site = web.TCPSite(runner, self._host, port, ssl_context=self.ssl_context)
                await site.start()
                scheme = "https" if self.ssl_context is not None else "http"
                urls.append(base_url(self._host, runner.addresses[0][1], scheme))
        except BaseException:
            await self.close()
            raise
        self.config.pay_api_url, self.config.user_center_url = urls
        # Remember the bound ports: a close() + start() comes back on the same URLs, which
        # lets tests take "Gini" down and bring it back.
        pay_port, uc_port = (runner.addresses[0][1] for runner in self._runners)
        self._ports = (pay_port, uc_port)

    async def close(self) -> None:
        """Stop both listeners; safe to call twice. State and URLs are kept."""
        runners, self._runners = self._runners, []
        for runner in reversed(runners):
            await runner.cleanup()
        if self.config.jwt is not None:
            await self.config.jwt.cache.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
