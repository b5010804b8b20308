"""What the observer adds to a request for the audit log (and traces): decided once per
request after inbound auth, finished once its answer is known.

Nothing here runs when neither is configured: the observer holds None instead of a
`RequestTelemetry` and checks only that.
"""

from __future__ import annotations

from contextvars import Token

from aiohttp import web

from proxy.errors import ProxyError
from proxy.identity import CallerIdentity
from proxy.metrics import METHODS
from proxy.telemetry.audit import (
    ENDPOINT_ACTIONS,
    SCOPE,
    AuditLog,
    AuditScope,
    AuditUnavailable,
    outcome,
)
from proxy.web.context import RequestContext


class Observation:
    """One request's telemetry in progress; `end` once its answer is known."""

    __slots__ = ("caller", "scope", "token")

    def __init__(
        self,
        caller: CallerIdentity,
        scope: AuditScope | None,
        token: Token[AuditScope | None] | None,
    ):
        self.caller = caller
        self.scope = scope
        self.token = token

    def end(self, request: web.Request, status: int, seconds: float) -> None:
        scope = self.scope
        if self.token is not None:
            SCOPE.reset(self.token)
        if scope is not None:
            try:
                user: str | None = self.caller.identifier(request.headers)  # memoised
            except ProxyError:
                user = None  # no valid user id: refused before any account was touched
            scope.record(scope.action, user, status, outcome(status), seconds)


class RequestTelemetry:
    """`begin` once the caller is admitted (may refuse: `AuditUnavailable`), `end` always."""

    def __init__(self, audit: AuditLog | None, caller: CallerIdentity):
        self.audit = audit
        self.caller = caller

    def begin(self, request: web.Request, ctx: RequestContext) -> Observation | None:
        audit = self.audit
        if audit is None:
            return None
        method = request.method
        if request.path.startswith("/_proxy/"):
            action = ENDPOINT_ACTIONS.get((method, ctx.route))
            if action is None:
                return None  # not an action on an account: an unknown endpoint, a 405
        else:
            action = "forward"
        if audit.required and not audit.ready():
            raise AuditUnavailable  # before anything reaches Gini
        scope = AuditScope(
            audit, action, ctx.request_id, method if method in METHODS else "other", ctx.route
        )
        scope.caller = ctx.caller
        return Observation(self.caller, scope, SCOPE.set(scope))
