"""Pay API payment routes: providers, configurations, payment requests and their payments.

Field names follow the SDK models named in the reference (§6); the provider list, the
configuration values and the resolve answer are sandbox inventions (inferred shapes).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aiohttp import web
from yarl import URL

from proxy.sandbox.auth import pay_namespace
from proxy.sandbox.common import SimError, config_of, json_response, state_of
from proxy.sandbox.models import PaymentRequest
from proxy.sandbox.uploads import digest_stream

MAX_JSON_BODY = 1024 * 1024

# (id, name, background colour, text colour): fixed so cached answers can be compared.
_PROVIDERS = (
    ("b09ef70a-490f-11eb-952e-9bc6f4646c57", "Sandbox Bank", "0073E6", "FFFFFF"),
    ("f6a1ce3e-490f-11eb-9c2b-57f7d8a0b8f4", "Demo Sparkasse", "E30613", "FFFFFF"),
)


def _provider_json(pay_api_url: str, index: int) -> dict[str, Any]:
    provider_id, name, background, text = _PROVIDERS[index]
    return {
        "id": provider_id,
        "name": name,
        "appVersion": "1.0.0",
        "colors": {"background": background, "text": text},
        # Absolute, under the Pay API, so response rewriting has something to rewrite.
        "iconLocation": f"{pay_api_url}/_sandbox/icons/{provider_id}.png",
        "gpcSupportedPlatforms": ["android", "ios"],
        "openWithSupportedPlatforms": [],
    }


async def list_providers(request: web.Request) -> web.Response:
    """GET /paymentProviders: a JSON array; counted in ``payment_provider_calls``."""
    pay_namespace(request)
    state_of(request).payment_provider_calls += 1
    base = config_of(request).pay_api_url
    return json_response([_provider_json(base, i) for i in range(len(_PROVIDERS))])


async def get_provider(request: web.Request) -> web.Response:
    """GET /paymentProviders/{id}; counted in ``payment_provider_calls``."""
    pay_namespace(request)
    state_of(request).payment_provider_calls += 1
    for index, provider in enumerate(_PROVIDERS):
        if provider[0] == request.match_info["id"]:
            return json_response(_provider_json(config_of(request).pay_api_url, index))
    raise SimError(404, "Payment provider not found")


async def get_configurations(request: web.Request) -> web.Response:
    """GET /configurations: client feature flags (values invented)."""
    pay_namespace(request)
    return json_response(
        {
            "clientID": config_of(request).client_id,
            "userJourneyAnalyticsEnabled": False,
            "skontoEnabled": True,
            "returnAssistantEnabled": True,
            "transactionDocsEnabled": False,
        }
    )


async def _json_object(request: web.Request) -> dict[str, Any]:
    kept = (await digest_stream(request.content, keep_up_to=MAX_JSON_BODY)).kept
    if kept is None:
        raise SimError(413, "Request body too large")
    try:
        body = json.loads(kept)
    except ValueError:
        raise SimError(400, "Body is not JSON") from None
    if not isinstance(body, dict):
        raise SimError(400, "Body must be a JSON object")
    return body


def _payment_request_url(pay_api_url: str, request_id: str) -> str:
    return f"{pay_api_url}/paymentRequests/{request_id}"


async def create_payment_request(request: web.Request) -> web.Response:
    """POST /paymentRequests: ``sourceDocumentLocation`` must be a URL of this simulator."""
    namespace = pay_namespace(request)
    body = await _json_object(request)
    pay_api_url = config_of(request).pay_api_url
    source = body.get("sourceDocumentLocation")
    try:
        source_url = URL(source) if isinstance(source, str) else None
    except ValueError:
        source_url = None
    if (
        source_url is None
        or not source_url.absolute
        or source_url.origin() != URL(pay_api_url).origin()
        or not source_url.path.startswith("/documents/")
    ):
        raise SimError(400, "sourceDocumentLocation must be an absolute Gini document URL")
    payment_request = PaymentRequest(
        id=str(uuid.uuid4()),
        namespace=namespace,
        source_document=str(source),
        fields={k: v for k, v in body.items() if k != "sourceDocumentLocation"},
        created_ms=int(time.time() * 1000),
    )
    state_of(request).payment_requests[payment_request.id] = payment_request
    location = _payment_request_url(pay_api_url, payment_request.id)
    # The wiki shows 201 + Location; an empty body is inferred.
    return web.Response(status=201, headers={"Location": location})


def _owned_payment_request(request: web.Request) -> PaymentRequest:
    namespace = pay_namespace(request)
    found = state_of(request).payment_requests.get(request.match_info["id"])
    if found is None or found.namespace != namespace:
        raise SimError(404, "Payment request not found")
    return found


def _payment_request_json(pay_api_url: str, found: PaymentRequest) -> dict[str, Any]:
    url = _payment_request_url(pay_api_url, found.id)
    links = {
        "self": url,
        "payment": f"{url}/payment",
        "sourceDocumentLocation": found.source_document,
    }
    provider = found.fields.get("paymentProvider")
    if isinstance(provider, str):
        links["paymentProvider"] = f"{pay_api_url}/paymentProviders/{provider}"
    status = "PAID" if found.payment is not None else "OPEN"
    return {**found.fields, "createdAt": found.created_ms, "status": status, "_links": links}


async def get_payment_request(request: web.Request) -> web.Response:
    """GET /paymentRequests/{id}."""
    found = _owned_payment_request(request)
    return json_response(_payment_request_json(config_of(request).pay_api_url, found))


def _payment_json(
    pay_api_url: str, found: PaymentRequest, payment: dict[str, Any]
) -> dict[str, Any]:
    url = _payment_request_url(pay_api_url, found.id)
    links = {
        "paymentRequest": url,
        "sourceDocumentLoction": found.source_document,  # sic: Gini's spelling (reference §6)
        "self": f"{url}/payment",
    }
    return {**payment, "_links": links}


async def resolve_payment(request: web.Request) -> web.Response:
    """POST /paymentRequests/{id}/payment: mark it paid → 201 with the payment."""
    found = _owned_payment_request(request)
    body = await _json_object(request)
    found.payment = {**body, "paidAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    payment = _payment_json(config_of(request).pay_api_url, found, found.payment)
    return json_response(payment, status=201)


async def get_payment(request: web.Request) -> web.Response:
    """GET /paymentRequests/{id}/payment; 404 until resolved."""
    found = _owned_payment_request(request)
    if found.payment is None:
        raise SimError(404, "Payment request not paid yet")
    return json_response(_payment_json(config_of(request).pay_api_url, found, found.payment))


def add_payment_routes(app: web.Application) -> None:
    """Register provider, configuration and payment-request routes on the Pay API app."""
    app.router.add_get("/paymentProviders", list_providers)
    app.router.add_get("/paymentProviders/{id}", get_provider)
    app.router.add_get("/configurations", get_configurations)
    app.router.add_post("/paymentRequests", create_payment_request)
    app.router.add_get("/paymentRequests/{id}", get_payment_request)
    app.router.add_post("/paymentRequests/{id}/payment", resolve_payment)
    app.router.add_get("/paymentRequests/{id}/payment", get_payment)
