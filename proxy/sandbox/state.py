"""In-memory state of the simulator: data, counters, request records and fault settings.

Tests read the counters and records and flip the fault settings directly; both apps of one
GiniSimulator share a single SimulatorState.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from proxy.sandbox.models import Document, PaymentRequest, Token, TokenKind, User

MAX_RECORDED_REQUESTS = 1000


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure: the status to answer (with `Retry-After` when set), or, with
    `drop`, a connection closed before any answer byte."""

    status: int
    retry_after: str | None = None
    drop: bool = False


@dataclass
class RecordedRequest:
    """One request as received by the Pay API ("pay") or the User Center ("uc")."""

    app: Literal["pay", "uc"]
    method: str
    path: str
    headers: list[tuple[str, str]]  # as received: original case, order and duplicates
    namespace: str | None = None  # the Pay API namespace it acted as, once authenticated
    query_string: str = ""
    request_id: str | None = None  # the X-Request-Id the simulator answered with (Pay API)
    status: int | None = None  # None while in flight or when the client went away
    at: float = field(default_factory=time.monotonic)  # when it arrived
    peer: str | None = None  # the client's address:port: one value per TCP connection
    client_cert: str | None = None  # subject CN of the TLS client certificate, if one was shown


@dataclass
class SimulatorState:
    """Everything the simulated Gini remembers, plus the test hooks."""

    # Counters
    logins: int = 0  # POST /login successes
    client_tokens_issued: int = 0  # client_credentials grants
    user_logins: int = 0  # password grants
    users_created: int = 0  # POST /api/users successes
    payment_provider_calls: int = 0  # GET /paymentProviders[/{id}] answered
    cancelled_requests: int = 0  # handlers cancelled because the client went away
    # Fault settings
    pay_api_delay: float = 0.0  # seconds added before every non-sandbox Pay API answer
    user_center_delay: float = 0.0  # same for the User Center
    reject_client: bool = False  # every client-authenticated call answers 401
    # The client secrets accepted instead of the configured one (None: the configured one)
    client_secrets: frozenset[str] | None = None
    max_upload_bytes: int | None = None  # larger uploads answer 413; None = no limit
    # Records and data
    requests: deque[RecordedRequest] = field(
        default_factory=lambda: deque(maxlen=MAX_RECORDED_REQUESTS)
    )
    tokens: dict[str, Token] = field(default_factory=dict)
    users: dict[str, User] = field(default_factory=dict)  # key: lower-cased email
    documents: dict[str, Document] = field(default_factory=dict)
    payment_requests: dict[str, PaymentRequest] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    _fail_remaining: int = field(default=0, init=False, repr=False)
    _fail_status: int = field(default=503, init=False, repr=False)
    _fail_app: str | None = field(default=None, init=False, repr=False)
    _fail_retry_after: str | None = field(default=None, init=False, repr=False)
    _fail_drop: bool = field(default=False, init=False, repr=False)
    # Requests being answered right now (sandbox routes included), and the most seen at once.
    in_flight: int = 0
    max_in_flight: int = 0
    _clock_offset: float = field(default=0.0, init=False, repr=False)

    # -- fault injection -------------------------------------------------------------------

    def fail_next(
        self,
        n: int,
        status: int = 503,
        app: Literal["pay", "uc"] | None = None,
        *,
        retry_after: str | None = None,
        drop: bool = False,
    ) -> None:
        """Make the next ``n`` non-sandbox requests (of ``app``, or of both) answer ``status``,
        with ``Retry-After: retry_after`` when given (seconds or an HTTP-date, sent as is); with
        ``drop`` they get no answer at all: the connection is closed as the request arrives."""
        if n < 0 or not 400 <= status <= 599:
            raise ValueError("fail_next needs n >= 0 and an error status")
        self._fail_remaining, self._fail_status, self._fail_app = n, status, app
        self._fail_retry_after, self._fail_drop = retry_after, drop

    def take_failure(self, app: str) -> Fault | None:
        """Consume one injected failure for ``app``; what to do instead of answering, or None."""
        if self._fail_remaining <= 0 or self._fail_app not in (None, app):
            return None
        self._fail_remaining -= 1
        return Fault(self._fail_status, self._fail_retry_after, self._fail_drop)

    # -- clock and tokens ------------------------------------------------------------------

    def now(self) -> float:
        """Monotonic time in seconds as the simulator sees it."""
        return self.clock() + self._clock_offset

    def wall_time(self) -> float:
        """Unix time as the simulator sees it (JWT `exp`), moved by advance_time too."""
        return time.time() + self._clock_offset

    def advance_time(self, seconds: float) -> None:
        """Move the simulator's clock forward, expiring tokens without sleeping."""
        self._clock_offset += seconds

    def issue_token(self, kind: TokenKind, subject: str, lifetime: int) -> Token:
        """Create and remember a fresh opaque (UUID) token."""
        token = Token(str(uuid.uuid4()), kind, subject, self.now() + lifetime)
        self.tokens[token.value] = token
        return token

    def find_token(self, value: str, *kinds: TokenKind) -> Token | None:
        """A known, unexpired token of one of ``kinds``; expired ones are forgotten."""
        token = self.tokens.get(value)
        if token is None:
            return None
        if token.expires_at <= self.now():
            del self.tokens[value]
            return None
        return token if token.kind in kinds else None

    def revoke_tokens(self, subject: str) -> None:
        """Forget every token issued for ``subject``."""
        for value in [v for v, t in self.tokens.items() if t.subject == subject]:
            del self.tokens[value]

    # -- users -----------------------------------------------------------------------------

    def add_user(self, email: str, password: str) -> User | None:
        """Create an anonymous user; None if the email is taken (compared case-insensitively)."""
        key = email.lower()  # inferred: Gini's user store treats emails case-insensitively
        if key in self.users:
            return None
        user = User(str(uuid.uuid4()), email, password)
        self.users[key] = user
        return user

    def find_user(self, email: str) -> User | None:
        """The user with this login email, if any."""
        return self.users.get(email.lower())

    def user_by_id(self, user_id: str) -> User | None:
        """The user with this id, if any."""
        return next((u for u in self.users.values() if u.id == user_id), None)

    def rename_user(self, user: User, new_email: str) -> bool:
        """Change a user's email; False if the new one belongs to someone else."""
        other = self.find_user(new_email)
        if other is not None and other is not user:
            return False
        del self.users[user.email.lower()]
        user.email = new_email
        self.users[new_email.lower()] = user
        return True

    def delete_user(self, email: str) -> bool:
        """Test hook: Gini loses this user; its tokens die and its next login is invalid_grant."""
        user = self.users.pop(email.lower(), None)
        if user is None:
            return False
        self.revoke_tokens(user.id)
        return True

    def user_emails(self) -> list[str]:
        """Emails of all existing users, in creation order."""
        return [u.email for u in self.users.values()]

    # -- records ---------------------------------------------------------------------------

    def requests_of(self, app: Literal["pay", "uc"]) -> list[RecordedRequest]:
        """The recorded requests of one app, oldest first."""
        return [r for r in self.requests if r.app == app]
