"""Flows 1-4 against `gini-auth-proxy demo` running in the image, from a client outside it.

Run by scripts/image-test inside the container's network namespace (`nsenter --net`), so the
demo keeps its default ports (8080 proxy, 9090 admin) without colliding with anything on the
host, and the image's HEALTHCHECK is exercised unchanged. Standard library only.
Usage: python -m imagelib.flows PAY_API_URL   (the simulator's URL from the demo's banner)
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

PROXY = "http://127.0.0.1:8080"
ADMIN = "http://127.0.0.1:9090"
TIMEOUT = 10.0


class FlowError(Exception):
    """A check failed; the message says which and what came back."""


def call(
    method: str, url: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request; HTTP errors are answers too (status, headers, body)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:  # noqa: S310
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def expect(
    what: str, answer: tuple[int, dict[str, str], bytes], status: int
) -> tuple[dict[str, str], Any]:
    """Checks the status; returns the headers and the JSON body (None when empty)."""
    code, headers, body = answer
    if code != status:
        raise FlowError(f"{what}: expected {status}, got {code}: {body[:300]!r}")
    print(f"  ok  {what} -> {code}", flush=True)
    return headers, json.loads(body) if body else None


def wait_ready(deadline: float) -> None:
    while True:
        try:
            if call("GET", f"{ADMIN}/readyz")[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise FlowError("the proxy did not become ready in time")
        time.sleep(0.2)


def token_of(what: str, data: Any) -> str:
    if not (isinstance(data, dict) and data.get("token_type") == "bearer"):
        raise FlowError(f"{what}: not a token answer: {data!r}")
    if not (isinstance(data.get("expires_in"), int) and data["expires_in"] > 0):
        raise FlowError(f"{what}: bad expires_in: {data!r}")
    return str(data["access_token"])


def flows(pay_api: str) -> None:
    alice = {"X-User-Id": "alice"}
    bob = {"X-User-Id": "bob"}

    print("flow 1: a trusted backend uploads and lists documents as 'alice'", flush=True)
    upload = {**alice, "Content-Type": "application/pdf"}
    headers, _ = expect(
        "POST /documents",
        call("POST", f"{PROXY}/documents?filename=hello.pdf", upload, b"%PDF-1.4 hello gini"),
        201,
    )
    location = headers.get("Location", "")
    if not location.startswith(f"{PROXY}/documents/"):
        raise FlowError(f"Location not rewritten to the proxy: {location!r}")
    _, listed = expect("GET /documents", call("GET", f"{PROXY}/documents", alice), 200)
    _, error = expect("GET /documents without X-User-Id", call("GET", f"{PROXY}/documents"), 400)
    if error.get("error") != "missing_user" or "requestId" not in error:
        raise FlowError(f"not the contract's JSON error: {error!r}")

    print("flow 2: a derived token for 'alice'", flush=True)
    _, data = expect(
        "POST /_proxy/tokens/derived", call("POST", f"{PROXY}/_proxy/tokens/derived", alice), 200
    )
    token = token_of("derived token", data)

    print("flow 3: that token used directly at Gini sees the upload of flow 1", flush=True)
    bearer = {"Authorization": f"Bearer {token}"}
    _, direct = expect("GET /documents at Gini", call("GET", f"{pay_api}/documents", bearer), 200)
    document_id = location.rsplit("/", 1)[-1]
    if document_id not in json.dumps(direct) or document_id not in json.dumps(listed):
        raise FlowError(f"document {document_id} missing from a list: {direct!r} {listed!r}")

    print("flow 4: an anonymous Gini user for 'bob', reused, then forgotten", flush=True)
    anonymous = f"{PROXY}/_proxy/tokens/anonymous"
    token_of(
        "anonymous token",
        expect("POST /_proxy/tokens/anonymous", call("POST", anonymous, bob), 200)[1],
    )
    token_of(
        "anonymous again",
        expect("POST /_proxy/tokens/anonymous (again)", call("POST", anonymous, bob), 200)[1],
    )
    users = f"{PROXY}/_proxy/users/anonymous"
    expect("DELETE /_proxy/users/anonymous", call("DELETE", users, bob), 204)
    expect("DELETE /_proxy/users/anonymous (again)", call("DELETE", users, bob), 404)

    print("admin endpoints", flush=True)
    expect("GET /healthz", call("GET", f"{ADMIN}/healthz"), 200)
    code, _, body = call("GET", f"{ADMIN}/metrics")
    if code != 200 or b"gini_proxy_requests_total" not in body:
        raise FlowError(f"/metrics: {code}, no gini_proxy_requests_total")
    print("  ok  GET /metrics -> 200 with gini_proxy_requests_total", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        wait_ready(time.monotonic() + 30)
        flows(argv[0].rstrip("/"))
    except (FlowError, OSError, ValueError) as exc:
        print(f"  FAIL {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
