"""What the observer adds to a request for the audit log and for traces: decided once per
request after inbound auth, finished once its answer is known.

Nothing here runs when neither is configured: the observer holds None instead of a
`RequestTelemetry` and checks only that. With tracing on, an unsampled request costs the
`traceparent` check and one random draw.
"""

from __future__ import annotations

from contextvars import Token

from aiohttp import web

from proxy.identity import CallerIdentity
from proxy.metrics import METHODS
from proxy.telemetry.audit import ENDPOINT_ACTIONS, AuditLog, AuditUnavailable
from proxy.telemetry.scope import SCOPE, AuditScope
from proxy.telemetry.tracing import CURRENT, RequestTrace, Tracing, decide, parse_traceparent
from proxy.web.context import RequestContext


class Observation:
    """A sampled request's trace in progress, and its audit scope if it is audited; `end`
    once its answer is known. (An audited request that is not sampled gets its `AuditScope`
    alone, which ends the same way: one object fewer per request.)"""

    __slots__ = ("scope", "trace", "trace_token")

    def __init__(self, trace: RequestTrace, trace_token: Token[RequestTrace | None]):
        self.trace = trace
        self.trace_token = trace_token
        self.scope: AuditScope | None = None

    def end(self, status: int, seconds: float) -> None:
        CURRENT.reset(self.trace_token)
        self.trace.end(status, seconds)
        if self.scope is not None:
            self.scope.end(status, seconds)


class RequestTelemetry:
    """`begin` once the caller is admitted (may refuse: `AuditUnavailable`), then `end`."""

    def __init__(self, audit: AuditLog | None, tracing: Tracing | None, caller: CallerIdentity):
        self.audit = audit
        self.tracing = tracing
        self.caller = caller

    def begin(
        self, request: web.Request, ctx: RequestContext, user_values: tuple[str, ...]
    ) -> Observation | AuditScope | None:
        """`user_values`: every copy of the identity header (`CallerIdentity.values`)."""
        audit = self.audit
        method = request.method
        action = None
        if audit is not None:
            # The proxy's own endpoints that act on an account; any other path is a `forward`.
            if request.path.startswith("/_proxy/"):
                action = ENDPOINT_ACTIONS.get((method, ctx.route))
            else:
                action = "forward"
            if action is not None and audit.required and not audit.ready():
                raise AuditUnavailable  # before anything reaches Gini
        observation = None
        trace_id = None
        tracing = self.tracing
        if tracing is not None:
            values = request.headers.getall("traceparent", ())
            parent = parse_traceparent(values) if values else None
            if parent is not None:
                trace_id = parent[0]  # the caller's trace, sampled or not, for the audit record
            if decide(parent, tracing.ratio):
                trace = tracing.begin(method if method in METHODS else "_OTHER", ctx.route, parent)
                observation = Observation(trace, CURRENT.set(trace))
                trace_id = trace.trace_id
        if action is None:
            return observation
        assert audit is not None
        scope = AuditScope(
            audit,
            action,
            ctx.request_id,
            method if method in METHODS else "other",
            ctx.route,
            ctx.caller,
            trace_id,
            self.caller.deriver,
            user_values,
        )
        if action != "forward":  # a flow-1 call takes no sub-action and tells no source
            scope.token = SCOPE.set(scope)
        if observation is None:
            return scope
        observation.scope = scope
        return observation
