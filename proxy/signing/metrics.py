"""The JWT signer's metrics, registered in the proxy's registry only in jwt mode."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


class JwtMetrics:
    """`gini_proxy_jwt_*`: signatures made, refusals by Gini, and the signing key's age."""

    def __init__(self, registry: CollectorRegistry):
        self.signed = Counter(
            "gini_proxy_jwt_signed_total",
            "JWTs signed for flow-1 requests (a cached JWT reused is not counted again).",
            registry=registry,
        )
        self.rejected = Counter(
            "gini_proxy_jwt_rejected_total",
            "Flow-1 requests with a JWT that Gini answered 401 (the log line names the kid).",
            registry=registry,
        )
        self.key_age = Gauge(
            "gini_proxy_jwt_signing_key_age_seconds",
            "Seconds since this process first loaded the key that signs now.",
            registry=registry,
        )
        self.keys_published = Gauge(
            "gini_proxy_jwt_keys_published",
            "Public keys in the JWKS the admin listener serves.",
            registry=registry,
        )
        self.signing_key = Gauge(
            "gini_proxy_jwt_signing_key_info",
            "Always 1, for the key that signs now; kid is its RFC 7638 thumbprint (public).",
            ("kid",),
            registry=registry,
        )
        self._kid: str | None = None

    def watch(self, age: Callable[[], float], published: Callable[[], float]) -> None:
        self.key_age.set_function(age)
        self.keys_published.set_function(published)

    def signing_kid(self, kid: str) -> None:
        """Point the info series at the new signing key (the old series is removed)."""
        if self._kid == kid:
            return
        if self._kid is not None:
            self.signing_key.remove(self._kid)
        self.signing_key.labels(kid).set(1)
        self._kid = kid
