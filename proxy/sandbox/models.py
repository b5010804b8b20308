"""Plain records of what the simulated Gini knows: tokens, users, documents, payment requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# derived: a /login token for an X-User-Identifier; user: a User Center password-grant token;
# client: a User Center client-credentials token (only good for user management).
TokenKind = Literal["derived", "user", "client"]
DocumentKind = Literal["plain", "partial", "composite"]


@dataclass(frozen=True)
class Token:
    """An issued access token and what it stands for."""

    value: str
    kind: TokenKind
    subject: str  # derived: the identifier; user: the user id; client: the client id
    expires_at: float  # on the simulator's monotonic clock

    def namespace(self) -> str | None:
        """The Pay API namespace this token acts as, or None if it cannot call the Pay API."""
        if self.kind == "derived":
            return self.subject
        if self.kind == "user":
            return anonymous_namespace(self.subject)
        return None


@dataclass
class User:
    """An anonymous (User Center) user."""

    id: str
    email: str
    password: str


@dataclass
class Document:
    """An uploaded document; only its digest is kept, never its bytes."""

    id: str
    namespace: str
    name: str
    kind: DocumentKind
    content_type: str
    size: int
    sha256: str
    created_ms: int
    doctype: str | None = None
    # composite: (partial id, rotationDelta) in the order given at creation
    partials: list[tuple[str, int]] = field(default_factory=list)
    # partial: ids of the composites built from it
    composites: list[str] = field(default_factory=list)

    @property
    def page_count(self) -> int:
        """Composites have one page per partial; uploads count as one page (inferred)."""
        return max(1, len(self.partials))


@dataclass
class PaymentRequest:
    """A payment request created from a document."""

    id: str
    namespace: str
    source_document: str  # absolute document URL as sent by the client
    fields: dict[str, Any]  # recipient, iban, bic, amount, purpose, paymentProvider, ...
    created_ms: int
    payment: dict[str, Any] | None = None  # set once resolved


def anonymous_namespace(user_id: str) -> str:
    """The Pay API namespace of an anonymous User Center user."""
    return f"anon:{user_id}"
