"""Pay API documents: upload (raw, multipart, partial, composite), read, list, delete."""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from typing import Any

from aiohttp import web
from yarl import URL

from proxy.sandbox.auth import pay_namespace
from proxy.sandbox.common import SimError, config_of, json_response, query_int, state_of
from proxy.sandbox.document_views import document_json, document_url, extractions_json, pages_json
from proxy.sandbox.models import Document, DocumentKind
from proxy.sandbox.payloads import placeholder_png
from proxy.sandbox.uploads import BodyDigest, digest_multipart_file, digest_stream

# Versioned vendor types (reference §6): any API version is accepted here.
PARTIAL_TYPE = re.compile(r"^application/vnd\.gini\.v\d+\.partial\+")
COMPOSITE_TYPE = re.compile(r"^application/vnd\.gini\.v\d+\.composite\+json$")
MAX_COMPOSITE_BODY = 1024 * 1024


def _owned_document(request: web.Request, namespace: str) -> Document:
    """The document named in the path if it belongs to ``namespace``; 404 otherwise."""
    doc = state_of(request).documents.get(request.match_info["id"])
    if doc is None or doc.namespace != namespace:
        raise SimError(404, "Document not found")
    return doc


def _local_document_id(pay_api_url: str, location: object) -> str | None:
    """The id in an absolute ``<pay_api_url>/documents/<id>`` URL; None for anything else."""
    if not isinstance(location, str):
        return None
    try:
        url = URL(location)
    except ValueError:
        return None
    if not url.absolute or url.origin() != URL(pay_api_url).origin():
        return None
    segments = url.path.split("/")
    if len(segments) != 3 or segments[1] != "documents" or not segments[2]:
        return None
    return segments[2]


async def upload_document(request: web.Request) -> web.Response:
    """POST /documents[/]: store the digest of a raw or multipart upload, or a composite."""
    namespace = pay_namespace(request)
    content_type = request.content_type
    if COMPOSITE_TYPE.match(content_type):
        return await _create_composite(request, namespace)
    digest: BodyDigest | None
    if content_type == "multipart/form-data":
        digest = await digest_multipart_file(request)
        if digest is None:
            raise SimError(400, "Multipart upload without a 'file' field")
    else:
        # Raw body "independent of the request Content-Type" (reference §6).
        digest = await digest_stream(request.content)
    if digest.size == 0:
        raise SimError(400, "Empty document")  # inferred
    limit = state_of(request).max_upload_bytes
    if limit is not None and digest.size > limit:
        raise SimError(413, "File too large")
    name = request.query.get("filename") or digest.filename or "document"
    kind: DocumentKind = "partial" if PARTIAL_TYPE.match(content_type) else "plain"
    doc = Document(
        id=str(uuid.uuid4()),
        namespace=namespace,
        name=name,
        kind=kind,
        content_type=content_type,
        size=digest.size,
        sha256=digest.sha256,
        created_ms=int(time.time() * 1000),
        doctype=request.query.get("doctype"),
    )
    return _created(request, doc)


async def _create_composite(request: web.Request, namespace: str) -> web.Response:
    """Composite: every partial must be an absolute URL of this simulator, owned by the caller."""
    body = (await digest_stream(request.content, keep_up_to=MAX_COMPOSITE_BODY)).kept
    if body is None:
        raise SimError(413, "Composite description too large")
    try:
        description = json.loads(body)
    except ValueError:
        raise SimError(400, "Composite body is not JSON") from None
    entries = description.get("partialDocuments") if isinstance(description, dict) else None
    if not isinstance(entries, list) or not entries:
        raise SimError(400, "partialDocuments must be a non-empty list")
    state, pay_api_url = state_of(request), config_of(request).pay_api_url
    partials: list[tuple[str, int]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise SimError(400, "partialDocuments entries must be objects")
        doc_id = _local_document_id(pay_api_url, entry.get("document"))
        partial = state.documents.get(doc_id) if doc_id else None
        if partial is None or partial.namespace != namespace or partial.kind != "partial":
            # Gini refuses partials of other users (reference §4.8, Android comment)
            raise SimError(400, f"Not a partial document of this user: {entry.get('document')!r}")
        rotation = entry.get("rotationDelta", 0)
        if not isinstance(rotation, int) or isinstance(rotation, bool):
            raise SimError(400, "rotationDelta must be an integer")
        partials.append((partial.id, rotation))
    doc = Document(
        id=str(uuid.uuid4()),
        namespace=namespace,
        name=request.query.get("filename") or "composite",
        kind="composite",
        content_type=request.content_type,
        size=len(body),
        sha256=hashlib.sha256(body).hexdigest(),  # a composite's digest: its JSON description
        created_ms=int(time.time() * 1000),
        doctype=request.query.get("doctype"),
        partials=partials,
    )
    for partial_id, _rotation in partials:
        state.documents[partial_id].composites.append(doc.id)
    return _created(request, doc)


def _created(request: web.Request, doc: Document) -> web.Response:
    state, pay_api_url = state_of(request), config_of(request).pay_api_url
    state.documents[doc.id] = doc
    body = document_json(doc, pay_api_url)
    headers = {"Location": document_url(pay_api_url, doc.id)}
    return json_response(body, status=201, headers=headers)


async def list_documents(request: web.Request) -> web.Response:
    """GET /documents: the caller's documents, oldest first; ``offset``/``limit`` as iOS sends."""
    namespace = pay_namespace(request)
    state, pay_api_url = state_of(request), config_of(request).pay_api_url
    offset = query_int(request, "offset", 0, low=0, high=10**9)
    limit = query_int(request, "limit", 10**9, low=0, high=10**9)
    own = [d for d in state.documents.values() if d.namespace == namespace]
    page = own[offset : offset + limit]
    return json_response({"documents": [document_json(d, pay_api_url) for d in page]})


async def get_document(request: web.Request) -> web.Response:
    """GET /documents/{id}."""
    doc = _owned_document(request, pay_namespace(request))
    pay_api_url = config_of(request).pay_api_url
    return json_response(document_json(doc, pay_api_url))


async def delete_document(request: web.Request) -> web.Response:
    """DELETE /documents/{id} → 204; links from related composites/partials are dropped."""
    doc = _owned_document(request, pay_namespace(request))
    documents = state_of(request).documents
    del documents[doc.id]
    for other in documents.values():
        other.composites = [c for c in other.composites if c != doc.id]
        other.partials = [p for p in other.partials if p[0] != doc.id]
    return web.Response(status=204)


async def get_extractions(request: web.Request) -> web.Response:
    """GET /documents/{id}/extractions: a fixed, plausible invoice."""
    _owned_document(request, pay_namespace(request))
    return json_response(extractions_json())


async def submit_feedback(request: web.Request) -> web.Response:
    """PUT (wiki) or POST (SDKs) /documents/{id}/extractions/feedback → 204."""
    _owned_document(request, pay_namespace(request))
    await digest_stream(request.content)
    return web.Response(status=204)


async def get_layout(request: web.Request) -> web.Response:
    """GET /documents/{id}/layout: one empty page per page (shape inferred)."""
    doc = _owned_document(request, pay_namespace(request))
    pages: list[dict[str, Any]] = [
        {"number": n, "width": 595.0, "height": 842.0, "textZones": []}
        for n in range(1, doc.page_count + 1)
    ]
    return json_response({"pages": pages})


async def get_pages(request: web.Request) -> web.Response:
    """GET /documents/{id}/pages."""
    doc = _owned_document(request, pay_namespace(request))
    return json_response(pages_json(doc, config_of(request).pay_api_url))


async def get_image(request: web.Request) -> web.Response:
    """GET /documents/{id}/pages/{n}/{size} and /processed: a placeholder PNG (inferred)."""
    doc = _owned_document(request, pay_namespace(request))
    page = request.match_info.get("page")
    if page is not None and (not page.isdigit() or not 1 <= int(page) <= doc.page_count):
        raise SimError(404, "Page not found")
    return web.Response(body=placeholder_png(), content_type="image/png")


def add_document_routes(app: web.Application) -> None:
    """Register the document routes on the Pay API app."""
    for path in ("/documents", "/documents/"):
        app.router.add_post(path, upload_document)
        app.router.add_get(path, list_documents)
    app.router.add_get("/documents/{id}", get_document)
    app.router.add_delete("/documents/{id}", delete_document)
    app.router.add_get("/documents/{id}/extractions", get_extractions)
    app.router.add_put("/documents/{id}/extractions/feedback", submit_feedback)
    app.router.add_post("/documents/{id}/extractions/feedback", submit_feedback)
    app.router.add_get("/documents/{id}/layout", get_layout)
    app.router.add_get("/documents/{id}/pages", get_pages)
    app.router.add_get("/documents/{id}/pages/{page}/{size}", get_image)
    app.router.add_get("/documents/{id}/processed", get_image)
