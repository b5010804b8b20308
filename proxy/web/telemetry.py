"""What the observer adds to a request for the audit log and for traces: decided once per
request after inbound auth, finished once its answer is known.

Nothing here runs when neither is configured: the observer holds None instead of a
`RequestTelemetry` and checks only that. With tracing on, an unsampled request costs the
`traceparent` check and one random draw.
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
from proxy.telemetry.tracing import CURRENT, RequestTrace, Tracing, decide, parse_traceparent
from proxy.web.context import RequestContext


class Observation:
    """One request's telemetry in progress; `end` once its answer is known."""

    __slots__ = ("caller", "scope", "scope_token", "trace", "trace_token", "user_values")

    def __init__(self, caller: CallerIdentity, user_values: tuple[str, ...]):
        self.caller = caller
        self.user_values = user_values  # the identity header's values, as the observer read them
        self.scope: AuditScope | None = None
        self.scope_token: Token[AuditScope | None] | None = None
        self.trace: RequestTrace | None = None
        self.trace_token: Token[RequestTrace | None] | None = None

    @property
    def trace_id(self) -> str | None:
        """The sampled request's trace id (for exemplars), else None."""
        return self.trace.trace_id if self.trace is not None else None

    def end(self, status: int, seconds: float) -> None:
        if self.trace is not None:
            assert self.trace_token is not None
            CURRENT.reset(self.trace_token)
            self.trace.end(status, seconds)
        scope = self.scope
        if scope is not None:
            if self.scope_token is not None:
                SCOPE.reset(self.scope_token)
            user = None  # no valid user id: refused before any account was touched
            if len(self.user_values) == 1:  # two or more are refused (`user_id_from`)
                try:
                    user = self.caller.deriver(self.user_values[0])  # memoised
                except ProxyError:
                    user = None
            scope.record(scope.action, user, status, outcome(status), seconds)


class RequestTelemetry:
    """`begin` once the caller is admitted (may refuse: `AuditUnavailable`), then `end`."""

    def __init__(self, audit: AuditLog | None, tracing: Tracing | None, caller: CallerIdentity):
        self.audit = audit
        self.tracing = tracing
        self.caller = caller

    def begin(
        self, request: web.Request, ctx: RequestContext, user_values: tuple[str, ...]
    ) -> Observation | None:
        """`user_values`: every copy of the identity header (`CallerIdentity.values`)."""
        audit = self.audit
        action = None
        if audit is not None:
            action = _action(request, ctx)
            if action is not None and audit.required and not audit.ready():
                raise AuditUnavailable  # before anything reaches Gini
        method = request.method
        observation = None
        trace_id = None
        tracing = self.tracing
        if tracing is not None:
            parent = parse_traceparent(request.headers.getall("traceparent", ()))
            if parent is not None:
                trace_id = parent[0]  # the caller's trace, sampled or not, for the audit record
            if decide(parent, tracing.ratio):
                observation = Observation(self.caller, user_values)
                trace = tracing.begin(method if method in METHODS else "_OTHER", ctx.route, parent)
                observation.trace, observation.trace_token = trace, CURRENT.set(trace)
                trace_id = trace.trace_id
        if action is not None:
            assert audit is not None
            observation = observation or Observation(self.caller, user_values)
            scope = AuditScope(
                audit,
                action,
                ctx.request_id,
                method if method in METHODS else "other",
                ctx.route,
                ctx.caller,
                trace_id,
            )
            observation.scope = scope
            if action != "forward":  # a flow-1 call takes no sub-action and tells no source
                observation.scope_token = SCOPE.set(scope)
        return observation


def _action(request: web.Request, ctx: RequestContext) -> str | None:
    """The audited action a request is, or None (an unknown endpoint, a 405)."""
    if request.path.startswith("/_proxy/"):
        return ENDPOINT_ACTIONS.get((request.method, ctx.route))
    return "forward"
