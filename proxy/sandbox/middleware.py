"""The one middleware of each simulator app: recording, fault injection and error rendering."""

from __future__ import annotations

import asyncio
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from proxy.sandbox.common import (
    OAUTH_JSON,
    PLAIN_JSON,
    RECORD_KEY,
    REQUEST_ID_KEY,
    STATE_KEY,
    AppName,
    SimError,
    is_sandbox_path,
    json_response,
)
from proxy.sandbox.state import RecordedRequest, SimulatorState

REQUEST_ID_HEADER = "X-Request-Id"


def make_middleware(app_name: AppName) -> Middleware:
    """Build the middleware for the Pay API ("pay") or the User Center ("uc")."""

    @web.middleware
    async def simulator_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        request_id = str(uuid.uuid4())  # Gini's own id: never the caller's
        record = RecordedRequest(
            app=app_name,
            method=request.method,
            path=request.path,
            headers=list(request.headers.items()),
            query_string=request.query_string,
            request_id=request_id if app_name == "pay" else None,
            peer=_peer(request),
            client_cert=_client_cert(request),
        )
        request[RECORD_KEY] = record
        request[REQUEST_ID_KEY] = request_id
        state.requests.append(record)
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            response = await _answer(request, handler, app_name, state)
        except asyncio.CancelledError:
            # With handler_cancellation on, this is how a vanished client shows up.
            state.cancelled_requests += 1
            raise
        finally:
            state.in_flight -= 1
        record.status = response.status
        return response

    return simulator_middleware


def _peer(request: web.Request) -> str | None:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if peer else None


def _client_cert(request: web.Request) -> str | None:
    """The subject CN of a verified client certificate (HTTPS with client auth only)."""
    cert = request.transport.get_extra_info("peercert") if request.transport else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return "(no common name)"


async def _answer(
    request: web.Request, handler: Handler, app_name: AppName, state: SimulatorState
) -> web.StreamResponse:
    """Apply delay and injected failures, run the handler, render errors."""
    if not is_sandbox_path(request.path):
        delay = state.pay_api_delay if app_name == "pay" else state.user_center_delay
        if delay > 0:
            await asyncio.sleep(delay)
        fault = state.take_failure(app_name)
        if fault is not None:
            if fault.drop and request.transport is not None:
                request.transport.abort()  # no answer byte: a reset, as a dying server gives
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            error = SimError(fault.status, "Injected failure", headers=headers)
            return error_response(request, app_name, error)
    try:
        return await handler(request)
    except SimError as error:
        return error_response(request, app_name, error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # Router 404/405 and aiohttp's own 413 etc.: same JSON shape as every other error.
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        code = exc.reason.lower().replace(" ", "_")
        return error_response(
            request, app_name, SimError(exc.status, exc.reason, code=code, headers=headers)
        )


def error_response(request: web.Request, app_name: AppName, error: SimError) -> web.Response:
    """Render an error: Gini's {"message","requestId"} or an OAuth-style User Center body."""
    if app_name == "pay":
        body = {"message": error.message, "requestId": request[REQUEST_ID_KEY]}
        return json_response(
            body, status=error.status, content_type=PLAIN_JSON, headers=error.headers
        )
    # String values only: iOS decodes User Center errors as [String: String] (reference §4.8).
    oauth = {"error": error.code, "error_description": error.message}
    return json_response(oauth, status=error.status, content_type=OAUTH_JSON, headers=error.headers)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare hook: every Pay API answer, streamed ones too, gets X-Request-Id."""
    request_id = request.get(REQUEST_ID_KEY) or str(uuid.uuid4())
    response.headers[REQUEST_ID_HEADER] = request_id
