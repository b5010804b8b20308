"""Caller connections on both listeners: how many may be open, and what a refusal looks like.

One `ConnectionGuard` per listener counts open connections, refuses those past its limit and
holds the `client_timeouts` its connections enforce (the mechanism, a subclass of aiohttp's
connection protocol, is in `web/aiohttp_server`). `descriptor_budget` decides the limits from
the open-file limit the process actually got, so neither listener can take the descriptors the
other one needs, and a caller past the limit gets 503 `too_many_connections` rather than a
reset from a failed accept. `raw_error` writes the contract's JSON error straight to a socket
when no request object exists (a refused connection, a head that never completed).
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from proxy.config import ClientTimeoutsConfig, Config
from proxy.errors import ProxyError, StartupError, error_answer
from proxy.metrics import Metrics
from proxy.web.middleware import new_request_id
from proxy.web.routes import OTHER

log = logging.getLogger("proxy.connections")

RECOVERED_SHARE = 0.9
"""An episode at the limit ends once open connections drop to this share of it, so a listener
hovering at the limit logs one warning, not one per connection that comes and goes."""
DESCRIPTOR_RESERVE = 128
"""Descriptors kept out of both listeners' budgets: the listening sockets, the store, token
calls beyond the per-caller share, secret files, log files, the event loop's own."""
MAX_LINGER_SECONDS = 10.0
"""aiohttp's default for reading away the rest of a body after an early answer."""


def raw_error(error: ProxyError) -> bytes:
    """The contract's JSON error as a complete HTTP/1.1 response that closes the connection."""
    headers, body = error_answer(error, new_request_id())
    headers["Connection"] = "close"
    lines = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True)
class ConnectionLimits:
    """What each listener may hold, decided once at startup (shown in `/status`)."""

    max_connections: int
    """The proxy listener's limit in force: `max_connections`, lowered to fit the limit."""
    configured_max_connections: int
    admin_max_connections: int
    open_file_limit: int | None  # None: unlimited


def descriptor_budget(config: Config) -> ConnectionLimits:
    """Raise the soft open-file limit as far as the listeners need (at most to the hard limit),
    then fit the limits into what was obtained: each proxy caller may need two descriptors (its
    own and a Gini connection), each admin caller one, plus `DESCRIPTOR_RESERVE`."""
    wanted = config.max_connections
    admin = config.admin_max_connections
    needed = 2 * wanted + admin + DESCRIPTOR_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                log.info("raised the open file limit", extra={"from": soft, "to": target})
                soft = target
            except (ValueError, OSError):
                pass
    if soft == resource.RLIM_INFINITY:
        return ConnectionLimits(wanted, wanted, admin, None)
    effective = min(wanted, (soft - DESCRIPTOR_RESERVE - admin) // 2)
    if effective < 1:
        raise StartupError(
            f"the open file limit ({soft}) leaves no room for caller connections: raise it "
            f"(ulimit -n) above {DESCRIPTOR_RESERVE + admin + 2} or lower admin_max_connections"
        )
    if effective < wanted:
        log.warning(
            "the open file limit is too low for max_connections: serving with a lower limit; "
            "raise the limit (ulimit -n) or lower max_connections",
            extra={"limit": soft, "needed": needed, "max_connections": effective,
                   "configured_max_connections": wanted},
        )  # fmt: skip
    return ConnectionLimits(effective, wanted, admin, soft)


class ConnectionGuard:
    """Counts one listener's open connections and holds the bounds every connection uses.

    `metrics` is given for the proxy listener only: its connections are the ones the contract's
    connection metrics describe.
    """

    def __init__(
        self,
        listener: str,
        timeouts: ClientTimeoutsConfig,
        max_connections: int,
        metrics: Metrics | None,
        max_header_bytes: int = 32768,
    ):
        self.listener = listener
        self.limit_key = "max_connections" if listener == "listen" else "admin_max_connections"
        self.header_seconds = timeouts.header_seconds
        self.idle_seconds = timeouts.idle_seconds
        self.body_seconds = timeouts.body_seconds
        self.send_seconds = timeouts.send_seconds
        self.max_connections = max_connections
        self.max_header_bytes = max_header_bytes
        self.metrics = metrics
        self.open = 0
        self.saturated = False  # inside an episode at the limit (logged once)
        self.refused_in_episode = 0
        if metrics is not None:
            metrics.open_connections.set_function(lambda: self.open)

    @property
    def lingering_seconds(self) -> float:
        """How long aiohttp may read away an unread body after answering: no longer than a
        caller may pause, so a stalled upload's connection closes soon after its 408."""
        return min(MAX_LINGER_SECONDS, self.body_seconds)

    def server_kwargs(self) -> dict[str, Any]:
        """The aiohttp server settings these bounds map onto."""
        return {"keepalive_timeout": self.idle_seconds, "lingering_time": self.lingering_seconds}

    def admit(self) -> bool:
        """Count a new connection in, or refuse it (False) when the limit is reached."""
        if self.open >= self.max_connections:
            if self.metrics is not None:
                self.metrics.connections_refused.inc()
            self.refused_in_episode += 1
            if not self.saturated:
                self.saturated = True
                log.warning(
                    f"{self.limit_key} reached: refusing new connections",
                    extra={"listener": self.listener, "max_connections": self.max_connections},
                )
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1
        if self.saturated and self.open <= self.max_connections * RECOVERED_SHARE:
            self.saturated = False
            log.info(
                f"open connections below {self.limit_key} again",
                extra={
                    "listener": self.listener,
                    "open": self.open,
                    "refused": self.refused_in_episode,
                },
            )
            self.refused_in_episode = 0

    def timed_out(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.client_timeout(reason)
        log.info("closed a slow caller connection", extra={"reason": reason,
                                                           "listener": self.listener})  # fmt: skip

    def refused_request(self, error: ProxyError, cause: str | None) -> None:
        """A request refused below the router (malformed, oversized head): counted and logged
        as the caller's mistake, not a server error."""
        if self.metrics is not None:
            self.metrics.observe_request("other", OTHER, error.status, 0.0)
        log.info(
            "refused malformed request",
            extra={"status": error.status, "error": cause, "listener": self.listener},
        )
