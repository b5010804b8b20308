"""`GET /.well-known/jwks.json` on the admin listener: the public keys Gini verifies JWTs with.

Served whenever a `jwt` section is configured, also in basic mode, so the key set can be
registered with Gini before `client.auth` switches to jwt. Without a `jwt` section it is a 404.
Only public members are ever in it: the document is built from
`proxy.config.signing_keys.public_members`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from proxy.config.jwt import JWKS_MAX_AGE
from proxy.errors import NotFound
from proxy.web.middleware import error_response, new_request_id

if TYPE_CHECKING:
    from proxy.signing.signer import JwtSigner

PATH = "/.well-known/jwks.json"
# Not application/jwk-set+json: plain JSON is what every JWKS client accepts.
CONTENT_TYPE = "application/json"


def add_jwks_route(app: web.Application, signer: JwtSigner | None) -> None:
    """Publish `signer`'s key set (read per request: a reload may swap it)."""

    async def jwks(_: web.Request) -> web.Response:
        request_id = new_request_id()
        if signer is None:
            return error_response(
                NotFound("No JWT signing keys are configured (the jwt section)."), request_id
            )
        return web.Response(
            body=signer.keys.jwks,
            headers={
                "Content-Type": CONTENT_TYPE,
                # Gini may cache it a few minutes; rotation waits that long before a new key
                # signs.
                "Cache-Control": f"public, max-age={JWKS_MAX_AGE}",
                "X-Request-Id": request_id,
            },
        )

    app.router.add_get(PATH, jwks)
