"""One audited request's facts, filled in as it runs, and the records they make.

Sub-actions of a request (an anonymous user created while its token is fetched) are written
through the request's `AuditScope`, found in a context variable the observer sets, so the
flow code needs no handle on the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar, Token

from proxy.errors import ProxyError
from proxy.telemetry.audit import AuditLog, outcome


class AuditScope:
    """One audited request's facts, filled in as it runs: `record` writes a sub-action's
    record, `end` the request's own once its answer is known."""

    __slots__ = (
        "action",
        "audit",
        "caller",
        "deriver",
        "method",
        "request_id",
        "route",
        "source",
        "token",
        "trace_id",
        "user_values",
    )

    def __init__(
        self,
        audit: AuditLog,
        action: str,
        request_id: str,
        method: str,
        route: str,
        caller: str | None,
        trace_id: str | None,
        deriver: Callable[[str], str],
        user_values: tuple[str, ...],
    ):
        self.audit = audit
        self.action = action
        self.request_id = request_id
        self.method = method
        self.route = route
        self.caller = caller
        self.trace_id = trace_id
        self.deriver = deriver  # user id -> X-User-Identifier (memoised)
        self.user_values = user_values  # the identity header's values, as the observer read them
        self.source: str | None = None
        self.token: Token[AuditScope | None] | None = None  # set in SCOPE for sub-actions

    def record(
        self, action: str, user: str | None, status: int, result: str, seconds: float
    ) -> None:
        self.audit.write(
            action,
            self.request_id,
            self.trace_id,
            self.caller,
            user,
            self.method,
            self.route,
            status,
            self.source if action.startswith("token.") else None,
            result,
            seconds,
        )

    def end(self, status: int, seconds: float) -> None:
        """The request's own record (and the sub-actions' scope closed)."""
        if self.token is not None:
            SCOPE.reset(self.token)
        user = None  # no valid user id: refused before any account was touched
        values = self.user_values
        if len(values) == 1:  # two or more are refused (`user_id_from`)
            try:
                user = self.deriver(values[0])
            except ProxyError:
                user = None
        self.audit.requested(self, user, status, seconds)


SCOPE: ContextVar[AuditScope | None] = ContextVar("gini_proxy_audit_scope", default=None)


def note_source(source: str) -> None:
    """Where the request's token came from, for its record: the token cache's `cache`, `fleet`
    or `upstream` (recorded as `gini`)."""
    scope = SCOPE.get()
    if scope is not None:
        scope.source = "gini" if source == "upstream" else source


def record_sub_action(
    action: str, user: str, status: int, started: float, result: str | None = None
) -> None:
    """A record for an action taken inside the current request (`user.create`)."""
    scope = SCOPE.get()
    if scope is not None:
        seconds = time.perf_counter() - started
        scope.record(action, user, status, result or outcome(status), seconds)
