"""Tests of the Gini simulator, through a real aiohttp client against real loopback servers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yarl

from proxy.sandbox import GiniSimulator, SimulatorState, expected_download_sha256
from proxy.sandbox.state import MAX_RECORDED_REQUESTS, RecordedRequest

from .conftest import eventually

CLIENT_ID = "sim-client"
CLIENT_SECRET = "sim-secret"
GINI_JSON = "application/vnd.gini.v1+json"
PARTIAL_PNG = "application/vnd.gini.v1.partial+png"
COMPOSITE = "application/vnd.gini.v1.composite+json"
MiB = 1024 * 1024


@pytest.fixture
async def sim() -> AsyncIterator[GiniSimulator]:
    """A started simulator with default lifetimes."""
    async with GiniSimulator(client_id=CLIENT_ID, client_secret=CLIENT_SECRET) as simulator:
        yield simulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session."""
    async with aiohttp.ClientSession() as session:
        yield session


def basic(client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> str:
    return aiohttp.encode_basic_auth(client_id, secret)


def derived(identifier: str) -> dict[str, str]:
    """Flow 1 headers: client credentials plus the derived user's identifier."""
    return {"Authorization": basic(), "X-User-Identifier": identifier}


def bearer(token: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {token}"}


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """One request; the status, the JSON body (or None) and the response."""
    async with http.request(method, url, **kwargs) as response:
        raw = await response.read()
        body = await response.json(content_type=None) if raw else None
        return response.status, body, response


async def login(http: aiohttp.ClientSession, sim: GiniSimulator, identifier: str) -> str:
    status, body, _ = await call(
        http, "POST", f"{sim.pay_api_url}/login", headers=derived(identifier)
    )
    assert status == 200
    token: str = body["access_token"]
    return token


async def upload(
    http: aiohttp.ClientSession,
    sim: GiniSimulator,
    headers: dict[str, str],
    data: Any,
    content_type: str = PARTIAL_PNG,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    all_headers = {**headers, "Content-Type": content_type}
    url = f"{sim.pay_api_url}/documents/?filename=scan.png&doctype=Invoice"
    return await call(http, "POST", url, headers=all_headers, data=data)


async def create_user(http: aiohttp.ClientSession, sim: GiniSimulator, email: str) -> str:
    """Create an anonymous user (password "secret1"); returns its id."""
    _, token, _ = await call(
        http,
        "POST",
        f"{sim.user_center_url}/oauth/token?grant_type=client_credentials",
        headers={"Authorization": basic()},
    )
    status, _, response = await call(
        http,
        "POST",
        f"{sim.user_center_url}/api/users",
        headers=bearer(token["access_token"]),
        json={"email": email, "password": "secret1"},
    )
    assert status == 201
    return response.headers["Location"].rsplit("/", 1)[1]


async def password_grant(
    http: aiohttp.ClientSession, sim: GiniSimulator, email: str, password: str = "secret1"
) -> tuple[int, Any]:
    form = {"username": email, "password": password}
    status, body, _ = await call(
        http,
        "POST",
        f"{sim.user_center_url}/oauth/token?grant_type=password",
        headers={"Authorization": basic()},
        data=form,
    )
    return status, body


# -- Pay API: auth, /login, namespaces ------------------------------------------------------


async def test_urls_and_request_ids(sim: GiniSimulator, http: aiohttp.ClientSession) -> None:
    assert sim.pay_api_url.startswith("http://127.0.0.1:")
    assert not sim.pay_api_url.endswith("/")
    assert sim.user_center_url != sim.pay_api_url
    ids = set()
    for _ in range(2):
        _, _, response = await call(
            http, "GET", f"{sim.pay_api_url}/documents", headers=derived("u")
        )
        ids.add(str(uuid.UUID(response.headers["X-Request-Id"])))
    assert len(ids) == 2


async def test_login_issues_bearer_token(sim: GiniSimulator, http: aiohttp.ClientSession) -> None:
    status, body, response = await call(
        http, "POST", f"{sim.pay_api_url}/login", headers=derived("user-1")
    )
    assert status == 200
    assert response.content_type == "application/json"
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3599
    uuid.UUID(body["access_token"])
    assert sim.state.logins == 1
    assert sim.state.requests[-1].namespace == "user-1"


@pytest.mark.parametrize("scheme", ["Bearer", "BEARER", "bearer"])
async def test_bearer_scheme_is_case_insensitive(
    sim: GiniSimulator, http: aiohttp.ClientSession, scheme: str
) -> None:
    token = await login(http, sim, "user-1")
    url = f"{sim.pay_api_url}/documents"
    status, body, _ = await call(http, "GET", url, headers=bearer(token, scheme))
    assert (status, body) == (200, {"documents": []})
    assert sim.state.requests[-1].namespace == "user-1"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": basic(secret="wrong"), "X-User-Identifier": "u"},
        {"Authorization": basic(client_id="other"), "X-User-Identifier": "u"},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Digest abc"},
    ],
)
async def test_bad_credentials_are_401(
    sim: GiniSimulator, http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    status, body, response = await call(
        http, "GET", f"{sim.pay_api_url}/documents", headers=headers
    )
    assert status == 401
    assert body == {"message": body["message"], "requestId": response.headers["X-Request-Id"]}


async def test_basic_without_identifier_is_400(
    sim: GiniSimulator, http: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": basic()}
    status, _, _ = await call(http, "POST", f"{sim.pay_api_url}/login", headers=headers)
    assert status == 400


async def test_token_expires_as_its_clock_moves(http: aiohttp.ClientSession) -> None:
    # The state's own clock moves (not advance_time): expiry is read from it on every call.
    shift = 0.0
    async with GiniSimulator(token_lifetime=1) as sim:
        sim.state.clock = lambda: time.monotonic() + shift
        token = await login(http, sim, "u")
        url = f"{sim.pay_api_url}/documents"
        assert (await call(http, "GET", url, headers=bearer(token)))[0] == 200
        shift = 1.05
        assert (await call(http, "GET", url, headers=bearer(token)))[0] == 401


async def test_advance_time_expires_tokens(sim: GiniSimulator, http: aiohttp.ClientSession) -> None:
    token = await login(http, sim, "u")
    sim.state.advance_time(3599)
    status, _, _ = await call(http, "GET", f"{sim.pay_api_url}/documents", headers=bearer(token))
    assert status == 401


async def test_derived_namespaces_are_isolated(
    sim: GiniSimulator, http: aiohttp.ClientSession
) -> None:
    _, doc, _ = await upload(http, sim, derived("alice"), b"png")
    doc_url = doc["_links"]["document"]
    assert (await call(http, "GET", doc_url, headers=derived("bob")))[0] == 404
    _, listing, _ = await call(http, "GET", f"{sim.pay_api_url}/documents", headers=derived("bob"))
    assert listing == {"documents": []}
    # The /login token of the same identifier is the same Gini user (flow 3).
    token = await login(http, sim, "alice")
    status, same, _ = await call(http, "GET", doc_url, headers=bearer(token))
    assert (status, same["id"]) == (200, doc["id"])


# -- Pay API: documents -----------------------------------------------------------------------


async def test_raw_upload_reports_digest_and_absolute_links(
    sim: GiniSimulator, http: aiohttp.ClientSession
) -> None:
    data = bytes(range(256)) * 4096
    status, doc, response = await upload(http, sim, derived("u"), data, "image/jpeg")
    assert status == 201
    assert response.content_type == GINI_JSON
    assert response.headers["Location"] == f"{sim.pay_api_url}/documents/{doc['id']}"
    assert (doc["size"], doc["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert (doc["name"], doc["progress"], doc["pageCount"]) == ("scan.png", "COMPLETED", 1)
    links = [*doc["_links"].values(), *doc["pages"][0]["images"].values()]
    assert all(link.startswith(f"{sim.pay_api_url}/documents/{doc['id']}") for link in links)
    assert set(doc["_links"]) == {"document", "extractions", "layout", "processed"}
    _, again, _ = await call(http, "GET", response.headers["Location"], headers=derived("u"))
    assert again == doc


async def test_multipart_upload(sim: GiniSimulator, http: aiohttp.ClientSession) -> None:
    form = aiohttp.FormData()
    form.add_field("meta", "ignored")
    form.add_field("file", b"%PDF-1.4 body", filename="bill.pdf", content_type="application/pdf")
    url = f"{sim.pay_api_url}/documents"
    status, doc, _ = await call(http, "POST", url, headers=derived("u"), data=form)
    assert status == 201
    assert doc["name"] == "bill.pdf"
    assert doc["sha256"] == hashlib.sha256(b"%PDF-1.4 body").hexdigest()


async def test_streamed_upload(sim: GiniSimulator, http: aiohttp.ClientSession) -> None:
    chunk = b"\xab" * MiB
    hasher = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(12):
            hasher.update(chunk)
            yield chunk

    status, doc, _ = await upload(http, sim, derived("u"), body(), "application/pdf")
    assert status == 201
    assert (doc["size"], doc["sha256"]) == (12 * MiB, hasher.hexdigest())


async def test_upload_limit_hook(sim: GiniSimulator, http: aiohttp.ClientSession) -> None:
    sim.state.max_upload_bytes = 10
    assert (await upload(http, sim, derived("u"), b"x" * 11))[0] == 413
    assert (await upload(http, sim, derived("u"), b"x" * 10))[0] == 201


async def post_composite(
    http: aiohttp.ClientSession, sim: GiniSimulator, identifier: str, urls: list[str]
) -> tuple[int, Any, aiohttp.ClientResponse]:
    description = {"partialDocuments": [{"document": u, "rotationDelta": 90} for u in urls]}
    headers = {**derived(identifier), "Content-Type": COMPOSITE}
    url = f"{sim.pay_api_url}/documents/"
    return await call(http, "POST", url, headers=headers, json=description)


async def upload_partial(http: aiohttp.ClientSession, sim: GiniSimulator, identifier: str) -> str:
    status, _, response = await upload(http, sim, derived(identifier), b"page")
    assert status == 201
    return response.headers["Location"]


async def test_composite_from_partials(sim: GiniSimulator, http: aiohttp.ClientSession) -> None:
    partial_urls = [await upload_partial(http, sim, "u") for _ in range(2)]
    status, composite, _ = await post_composite(http, sim, "u", partial_urls)
    assert status == 201
    assert composite["pageCount"] == 2
    assert [p["document"] for p in composite["partialDocuments"]] == partial_urls
    _, partial, _ = await call(http, "GET", partial_urls[0], headers=derived("u"))
    assert partial["compositeDocuments"] == [{"document": composite["_links"]["document"]}]


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda url, base: url.replace(base, "https://pay-api.gini.net"),  # foreign host
        lambda url, base: url.replace(base, ""),  # relative
        lambda url, base: f"{base}/documents/{uuid.uuid4()}",  # unknown id
        lambda url, base: url.replace("http://", "https://"),  # other scheme
        lambda url, base: f"{url}/extractions",  # not a document URL
    ],
)
async def test_composite_rejects_foreign_partial_urls(
    sim: GiniSimulator, http: aiohttp.ClientSession, rewrite: Any
) -> None:
    url = await upload_partial(http, sim, "u")
    status, body, _ = await post_composite(http, sim, "u", [rewrite(url, sim.pay_api_url)])
    assert status == 400
    assert "message" in body


async def test_composite_rejects_other_users_and_plain_documents(
    sim: GiniSimulator, http: aiohttp.ClientSession
) -> None:
    others = await upload_partial(http, sim, "mallory")
    assert (await post_composite(http, sim, "u", [others]))[0] == 400
    _, _, plain = await upload(http, sim, derived("u"), b"x", "application/pdf")
    assert (await post_composite(http, sim, "u", [plain.headers["Location"]]))[0] == 400
    assert (await post_composite(http, sim, "u", []))[0] == 400


async def test_document_subresources_and_delete(
    sim: GiniSimulator, http: aiohttp.ClientSession
) -> None:
    headers = derived("u")
    _, doc, _ = await upload(http, sim, headers, b"png")
    doc_url = doc["_links"]["document"]
    status, extractions, response = await call(
        http, "GET", doc["_links"]["extractions"], headers=headers
    )
    assert status == 200
    assert response.content_type == GINI_JSON
    assert set(extractions) == {"extractions", "candidates", "compoundExtractions"}
    assert extractions["extractions"]["amountToPay"]["value"].endswith(":EUR")
    _, pages, _ = await call(http, "GET", f"{doc_url}/pages", headers=headers)
    assert pages[0]["pageNumber"] == 1
    assert pages[0]["images"]["medium"].startswith(doc_url)
    async with http.get(pages[0]["images"]["large"], headers=headers) as image:
        assert image.content_type == "image/png"
        assert (await image.read()).startswith(b"\x89PNG")
    assert (await call(http, "DELETE", doc_url, headers=headers))[0] == 204
    assert (await call(http, "GET", doc_url, headers=headers))[0] == 404


# -- Pay API: payments ---------------------------------------------------------------------


async def test_payment_providers_are_counted(
    sim: GiniSimulator, http: aiohttp.ClientSession
) -> None:
    url = f"{sim.pay_api_url}/paymentProviders"
    status, providers, _ = await call(http, "GET", url, headers=derived("u"))
    assert status == 200
    assert len(providers) >= 1
    assert providers[0]["iconLocation"].startswith(f"{sim.pay_api_url}/")
    status, one, _ = await call(http, "GET", f"{url}/{providers[0]['id']}", headers=derived("u"))
    assert (status, one) == (200, providers[0])
    assert sim.state.payment_provider_calls == 2
    status, config, _ = await call(
        http, "GET", f"{sim.pay_api_url}/configurations", headers=derived("u")
    )
    assert status == 200
    assert config["clientID"] == CLIENT_ID


async def test_payment_requests(sim: GiniSimulator, http: aiohttp.ClientSession) -> None:
    _, doc, _ = await upload(http, sim, derived("u"), b"x")
    url = f"{sim.pay_api_url}/paymentRequests"
    payload = {"sourceDocumentLocation": doc["_links"]["document"], "amount": "1.00:EUR"}
    status, _, response = await call(http, "POST", url, headers=derived("u"), json=payload)
    assert status == 201
    location = response.headers["Location"]
    assert location.startswith(f"{url}/")
    status, found, _ = await call(http, "GET", location, headers=derived("u"))
    assert status == 200
    assert found["amount"] == "1.00:EUR"
    assert found["_links"]["self"] == location
    assert found["_links"]["sourceDocumentLocation"] == doc["_links"]["document"]
    foreign = {"sourceDocumentLocation": f"https://pay-api.gini.net/documents/{doc['id']}"}
    assert (await call(http, "POST", url, headers=derived("u"), json=foreign))[0] == 400


# -- User Center -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_client_token(sim: GiniSimulator, http: aiohttp.ClientSession, method: str) -> None:
    url = f"{sim.user_center_url}/oauth/token?grant_type=client_credentials"
    headers = {"Authorization": basic(), "Accept": "application/json"}
    status, body, response = await call(http, method, url, headers=headers)
    assert status == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert body["token_type"] == "bearer"
    assert body["scope"] == "read"
    assert body["expires_in"] == 43199
    assert sim.state.client_tokens_issued == 1


async def test_client_token_with_bad_credentials(
    sim: GiniSimulator, http: aiohttp.ClientSession
) -> None:
    url = f"{sim.user_center_url}/oauth/token?grant_type=client_credentials"
    for headers in ({}, {"Authorization": basic(secret="nope")}):
        status, body, _ = await call(http, "POST", url, headers=headers)
        assert status == 401
        assert body["error"] == "unauthorized"
        assert all(isinstance(v, str) for v in body.values())


async def test_create_user_and_password_grant(
    sim: GiniSimulator, http: aiohttp.ClientSession
) -> None:
    user_id = await create_user(http, sim, "a@example.com")
    assert sim.state.users_created == 1
    assert sim.state.user_emails() == ["a@example.com"]
    status, token = await password_grant(http, sim, "a@example.com")
    assert status == 200
    assert token["expires_in"] == 3599
    assert sim.state.user_logins == 1
    # The anonymous user's token works on the Pay API, as its own namespace.
    docs_url = f"{sim.pay_api_url}/documents"
    status, _, _ = await call(http, "GET", docs_url, headers=bearer(token["access_token"]))
    assert status == 200
    assert sim.state.requests[-1].namespace == f"anon:{user_id}"
    check = f"{sim.user_center_url}/oauth/check_token?token={token['access_token']}"
    status, info, _ = await call(http, "GET", check)
    assert (status, info["user_name"], info["active"]) == (200, user_id, True)


async def test_password_grant_in_body_with_percent_encoding(
    sim: GiniSimulator, http: aiohttp.ClientSession
) -> None:
    email = f"{uuid.uuid4()}@example.com".upper()  # iOS style
    await create_user(http, sim, email)
    # iOS percent-encodes the whole form, "@" included.
    form = f"grant_type=password&username={quote(email, safe='')}&password=secret1"
    assert "%40" in form
    headers = {"Authorization": basic(), "Content-Type": "application/x-www-form-urlencoded"}
    url = f"{sim.user_center_url}/oauth/token"
    status, body, _ = await call(http, "POST", url, headers=headers, data=form.encode())
    assert status == 200
    assert body["token_type"] == "bearer"


async def test_wrong_password_is_invalid_grant(
    sim: GiniSimulator, http: aiohttp.ClientSession
) -> None:
    await create_user(http, sim, "a@example.com")
    for email, password in (("a@example.com", "wrong!"), ("nobody@example.com", "secret1")):
        status, body = await password_grant(http, sim, email, password)
        assert (status, body) == (
            400,
            {"error": "invalid_grant", "error_description": "Bad credentials"},
        )


async def test_deleted_user_is_invalid_grant(
    sim: GiniSimulator, http: aiohttp.ClientSession
) -> None:
    await create_user(http, sim, "a@example.com")
    _, token = await password_grant(http, sim, "a@example.com")
    assert sim.state.delete_user("a@example.com")
    status, body = await password_grant(http, sim, "a@example.com")
    assert (status, body["error"]) == (400, "invalid_grant")
    docs_url = f"{sim.pay_api_url}/documents"
    assert (await call(http, "GET", docs_url, headers=bearer(token["access_token"])))[0] == 401
    assert not sim.state.delete_user("a@example.com")


async def test_refresh_grant_is_unsupported(
    sim: GiniSimulator, http: aiohttp.ClientSession
) -> None:
    form = {"grant_type": "refresh_token", "refresh_token": "x"}
    url = f"{sim.user_center_url}/oauth/token"
    status, body, _ = await call(http, "POST", url, headers={"Authorization": basic()}, data=form)
    assert (status, body["error"]) == (400, "unsupported_grant_type")


async def test_user_creation_rules(sim: GiniSimulator, http: aiohttp.ClientSession) -> None:
    user_id = await create_user(http, sim, "a@example.com")
    _, token, _ = await call(
        http,
        "GET",
        f"{sim.user_center_url}/oauth/token?grant_type=client_credentials",
        headers={"Authorization": basic()},
    )
    url = f"{sim.user_center_url}/api/users"
    auth = bearer(token["access_token"], "BEARER")
    for payload in (
        {"email": "A@example.com", "password": "secret1"},  # existing, other case
        {"email": "b@example.com", "password": "short"},
        {"email": "not-an-email", "password": "secret1"},
        {"email": "c@example.com"},
    ):
        assert (await call(http, "POST", url, headers=auth, json=payload))[0] == 400
    good = {"email": "b@example.com", "password": "secret1"}
    status, _, response = await call(http, "POST", url, headers=auth, json=good)
    assert status == 201
    assert response.headers["Content-Length"] == "0"
    assert response.headers["Location"].startswith(f"{sim.user_center_url}/api/users/")
    assert (await call(http, "POST", url, headers=bearer("bogus"), json=good))[0] == 401
    status, info, _ = await call(http, "GET", f"{url}/{user_id}", headers=auth)
    assert (status, info) == (200, {"id": user_id, "email": "a@example.com"})
    sim.state.advance_time(43199)  # the client token expires
    assert (await call(http, "GET", f"{url}/{user_id}", headers=auth))[0] == 401


# -- Sandbox routes ----------------------------------------------------------------------------


async def raw_exchange(base_url: str, request: bytes) -> tuple[bytes, bytes]:
    """Send bytes as-is (the aiohttp client would merge duplicate headers); head and body."""
    url = yarl.URL(base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(request)
        answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


async def test_echo_describes_the_request(sim: GiniSimulator) -> None:
    body = b'{"k": [1]}'
    request = (
        b"PUT /_sandbox/echo/a%2Fb?x=1&x=2 HTTP/1.1\r\nHost: gini\r\n"
        b"X-Dup: 1\r\nContent-Type: application/json\r\nx-dup: 2\r\n"
        b"Content-Length: 10\r\nConnection: close\r\n\r\n" + body
    )
    head, raw = await raw_exchange(sim.pay_api_url, request)
    assert head.startswith(b"HTTP/1.1 200 ")
    echo = json.loads(raw)
    assert (echo["method"], echo["path"]) == ("PUT", "/_sandbox/echo/a/b")
    assert echo["raw_path"] == "/_sandbox/echo/a%2Fb?x=1&x=2"
    assert (echo["query"], echo["query_items"]) == ({"x": "1"}, [["x", "1"], ["x", "2"]])
    assert echo["headers"] == [
        ["Host", "gini"],
        ["X-Dup", "1"],
        ["Content-Type", "application/json"],
        ["x-dup", "2"],
        ["Content-Length", "10"],
        ["Connection", "close"],
    ]
    assert echo["body_json"] == {"k": [1]}
    assert (echo["body_bytes"], echo["body_sha256"]) == (10, hashlib.sha256(body).hexdigest())


async def test_echo_shapes_the_answer(sim: GiniSimulator, http: aiohttp.ClientSession) -> None:
    query = "status=418&location=http://elsewhere/x&content_type=application/vnd.x%2Bjson"
    url = f"{sim.pay_api_url}/_sandbox/echo?{query}&header=X-A:1&header=X-A:2"
    status, echo, response = await call(http, "POST", url, data=b"\x00\x01")
    assert status == 418
    assert response.headers["Location"] == "http://elsewhere/x"
    assert response.content_type == "application/vnd.x+json"
    assert response.headers.getall("X-A") == ["1", "2"]
    assert echo["body_json"] is None
    assert echo["body_bytes"] == 2


async def test_echo_delay_counts_cancelled_clients(
    sim: GiniSimulator, http: aiohttp.ClientSession
) -> None:
    timeout = aiohttp.ClientTimeout(total=0.2)
    with pytest.raises(asyncio.TimeoutError):
        await call(http, "GET", f"{sim.pay_api_url}/_sandbox/echo?delay=30", timeout=timeout)
    # the server notices the closed connection asynchronously
    await eventually(lambda: sim.state.cancelled_requests > 0, what="the cancel")
    assert sim.state.cancelled_requests == 1


@pytest.mark.parametrize("chunked", ["0", "1"])
async def test_download_streams_the_pattern(
    sim: GiniSimulator, http: aiohttp.ClientSession, chunked: str
) -> None:
    size = 5 * MiB + 123
    url = f"{sim.pay_api_url}/_sandbox/download?bytes={size}&chunked={chunked}"
    hasher, received = hashlib.sha256(), 0
    async with http.get(url) as response:
        assert response.status == 200
        assert response.content_length == (None if chunked == "1" else size)
        async for chunk in response.content.iter_chunked(MiB):
            hasher.update(chunk)
            received += len(chunk)
    assert received == size
    assert hasher.hexdigest() == expected_download_sha256(size)
    assert expected_download_sha256(0) == hashlib.sha256(b"").hexdigest()


async def test_generated_json_is_large_and_full_of_links(
    sim: GiniSimulator, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{sim.pay_api_url}/_sandbox/json?size=200000") as response:
        assert response.content_type == "application/json"
        raw = await response.read()
    assert 200_000 <= len(raw) < 201_000
    assert raw.count(sim.pay_api_url.encode()) > 1000


@pytest.mark.parametrize("route", ["malformed", "reset"])
async def test_broken_answers_raise_in_the_client(
    sim: GiniSimulator, http: aiohttp.ClientSession, route: str
) -> None:
    with pytest.raises(aiohttp.ClientError):
        await call(http, "GET", f"{sim.pay_api_url}/_sandbox/{route}")


# -- Fault injection and records ---------------------------------------------------------------


async def test_fail_next(sim: GiniSimulator, http: aiohttp.ClientSession) -> None:
    sim.state.fail_next(2, status=502)
    url = f"{sim.pay_api_url}/documents"
    status, body, response = await call(http, "GET", url, headers=derived("u"))
    assert (status, body["requestId"]) == (502, response.headers["X-Request-Id"])
    assert (await call(http, "GET", f"{sim.pay_api_url}/_sandbox/echo"))[0] == 200  # exempt
    token_url = f"{sim.user_center_url}/oauth/token?grant_type=client_credentials"
    status, body, _ = await call(http, "GET", token_url, headers={"Authorization": basic()})
    assert status == 502
    assert isinstance(body["error"], str)
    assert (await call(http, "GET", url, headers=derived("u")))[0] == 200
    sim.state.fail_next(1, app="uc")
    assert (await call(http, "GET", url, headers=derived("u")))[0] == 200
    assert (await call(http, "GET", token_url, headers={"Authorization": basic()}))[0] == 503


async def test_delay_setting(sim: GiniSimulator, http: aiohttp.ClientSession) -> None:
    sim.state.pay_api_delay = 0.2
    started = time.monotonic()
    assert (await call(http, "GET", f"{sim.pay_api_url}/documents", headers=derived("u")))[0] == 200
    assert time.monotonic() - started >= 0.2


async def test_reject_client(sim: GiniSimulator, http: aiohttp.ClientSession) -> None:
    token = await login(http, sim, "u")
    sim.state.reject_client = True
    assert (await call(http, "POST", f"{sim.pay_api_url}/login", headers=derived("u")))[0] == 401
    assert (await call(http, "GET", f"{sim.pay_api_url}/documents", headers=derived("u")))[0] == 401
    token_url = f"{sim.user_center_url}/oauth/token?grant_type=client_credentials"
    assert (await call(http, "GET", token_url, headers={"Authorization": basic()}))[0] == 401
    # Tokens already handed to users keep working: they are not client credentials.
    assert (await call(http, "GET", f"{sim.pay_api_url}/documents", headers=bearer(token)))[
        0
    ] == 200


async def test_unknown_route_is_json_404(sim: GiniSimulator, http: aiohttp.ClientSession) -> None:
    status, body, response = await call(http, "GET", f"{sim.pay_api_url}/nope")
    assert status == 404
    assert body["requestId"] == response.headers["X-Request-Id"]
    recorded = sim.state.requests[-1]
    assert (recorded.app, recorded.path, recorded.status) == ("pay", "/nope", 404)


async def test_restart_keeps_urls_and_state(http: aiohttp.ClientSession) -> None:
    sim = GiniSimulator()
    await sim.start()
    token = await login(http, sim, "u")
    url = sim.pay_api_url
    await sim.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await call(http, "GET", f"{url}/documents", headers=bearer(token))
    await sim.start()
    try:
        assert sim.pay_api_url == url
        assert (await call(http, "GET", f"{url}/documents", headers=bearer(token)))[0] == 200
    finally:
        await sim.close()


def test_request_records_are_bounded() -> None:
    state = SimulatorState()
    for index in range(MAX_RECORDED_REQUESTS + 5):
        state.requests.append(RecordedRequest("pay", "GET", f"/{index}", []))
    assert len(state.requests) == MAX_RECORDED_REQUESTS
    assert state.requests[0].path == "/5"


def test_fail_next_validates() -> None:
    with pytest.raises(ValueError, match="fail_next"):
        SimulatorState().fail_next(1, status=200)
