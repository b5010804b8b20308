"""JSON shapes of documents, pages and extractions, with absolute URLs as Gini sends them."""

from __future__ import annotations

from typing import Any

from proxy.sandbox.models import Document

# Page image sizes as in the SDK fixtures (reference §6: pages[].images{"750x900": url, ...}).
MEDIUM, LARGE = "750x900", "1280x1810"


def document_url(pay_api_url: str, doc_id: str) -> str:
    """Absolute URL of a document."""
    return f"{pay_api_url}/documents/{doc_id}"


def _source_classification(doc: Document) -> str:
    # inferred mapping onto the SDK enum values (SCANNED, NATIVE, COMPOSITE, ...)
    if doc.kind == "composite":
        return "COMPOSITE"
    return "NATIVE" if "pdf" in doc.content_type else "SCANNED"


def _page_images(url: str, number: int) -> tuple[str, str]:
    return f"{url}/pages/{number}/{MEDIUM}", f"{url}/pages/{number}/{LARGE}"


def document_json(doc: Document, pay_api_url: str) -> dict[str, Any]:
    """The document resource (GET /documents/{id}, upload answers, list entries)."""
    url = document_url(pay_api_url, doc.id)
    pages = []
    for number in range(1, doc.page_count + 1):
        medium, large = _page_images(url, number)
        pages.append({"pageNumber": number, "images": {MEDIUM: medium, LARGE: large}})
    body: dict[str, Any] = {
        "id": doc.id,
        "name": doc.name,
        "creationDate": doc.created_ms,
        "progress": "COMPLETED",  # processing is instant in the sandbox
        "origin": "UPLOAD",
        "sourceClassification": _source_classification(doc),
        "pageCount": doc.page_count,
        "pages": pages,
        "_links": {
            "document": url,
            "extractions": f"{url}/extractions",
            "layout": f"{url}/layout",
            "processed": f"{url}/processed",
        },
        # Sandbox extension (not Gini): what was received, so tests can check uploads.
        "size": doc.size,
        "sha256": doc.sha256,
    }
    if doc.kind == "composite":
        body["partialDocuments"] = [
            {"document": document_url(pay_api_url, pid), "rotationDelta": rotation}
            for pid, rotation in doc.partials
        ]
    if doc.kind == "partial":
        body["compositeDocuments"] = [
            {"document": document_url(pay_api_url, cid)} for cid in doc.composites
        ]
    return body


def pages_json(doc: Document, pay_api_url: str) -> list[dict[str, Any]]:
    """GET /documents/{id}/pages: ``[{pageNumber, images: {medium, large}}]``."""
    url = document_url(pay_api_url, doc.id)
    result = []
    for number in range(1, doc.page_count + 1):
        medium, large = _page_images(url, number)
        result.append({"pageNumber": number, "images": {"medium": medium, "large": large}})
    return result


def _box(page: int, left: float, top: float) -> dict[str, Any]:
    return {"page": page, "left": left, "top": top, "width": 120.0, "height": 12.0}


def _extraction(
    entity: str, value: str, top: float, candidates: str | None = None
) -> dict[str, Any]:
    item: dict[str, Any] = {"entity": entity, "value": value, "box": _box(1, 60.0, top)}
    if candidates:
        item["candidates"] = candidates
    return item


def extractions_json() -> dict[str, Any]:
    """A fixed, plausible invoice extraction (values invented; field names from the SDKs)."""
    amount = _extraction("amount", "24.99:EUR", 400.0, "amounts")
    return {
        "extractions": {
            "amountToPay": amount,
            "iban": _extraction("iban", "DE89370400440532013000", 500.0, "ibans"),
            "bic": _extraction("bic", "COBADEFFXXX", 512.0),
            "paymentRecipient": _extraction("companyname", "Sandbox Energie GmbH", 80.0),
            "paymentPurpose": _extraction("reference", "Rechnung 2024-0042", 300.0),
            "docType": {"entity": "doctype", "value": "Invoice"},
        },
        "candidates": {
            "amounts": [amount, _extraction("amount", "21.00:EUR", 380.0)],
            "ibans": [_extraction("iban", "DE89370400440532013000", 500.0)],
        },
        "compoundExtractions": {
            "lineItems": [
                [
                    {"entity": "text", "name": "description", "value": "Strom Mai"},
                    {"entity": "numeric", "name": "quantity", "value": "1"},
                    {"entity": "amount", "name": "baseGross", "value": "24.99:EUR"},
                ]
            ]
        },
    }
