"""Did Gini ask for a client certificate, then hang up? What a TLS 1.3 error does not say.

Under TLS 1.3 the server checks the client certificate after its own side of the handshake is
done: a missing or refused certificate comes back as an alert at the first read, and that alert
is often lost to the TCP reset that follows it (the server closes with our request unread), so
the error that reaches the proxy says only "connection closed". OpenSSL's message callback sees
the decrypted handshake, including the server's CertificateRequest: a connection that was asked
for a certificate and then heard nothing more from the server was refused for it. Under TLS 1.2
the same callback tells a refused certificate from other handshake failures.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

HANDSHAKE = 22
APPLICATION_DATA = 23
INNER_CONTENT_TYPE = 0x101  # OpenSSL's SSL3_RT_INNER_CONTENT_TYPE: a TLS 1.3 record's real type
CERTIFICATE = 11
CERTIFICATE_REQUEST = 13
FINISHED = 20
NEW_SESSION_TICKET = 4
TLS1_3 = 0x0304
EMPTY_CERTIFICATE_MESSAGE = 8  # header and empty list (TLS 1.3 adds a 1-byte context)
WINDOW_SECONDS = 30.0
"""How long an unanswered request for a certificate explains a failure."""
MAX_TRACKED = 256


@dataclass(slots=True)
class Asked:
    """A connection the server asked for a client certificate, not yet accepted."""

    at: float
    sent_certificate: bool = False


class ClientCertificateWatch:
    """Installed on an SSL context: the connections the server asked for a client certificate
    and that heard nothing more from it (for `window` seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window: float = WINDOW_SECONDS):
        self.clock = clock
        self.window = window
        self._asked: dict[int, Asked] = {}

    def install(self, context: ssl.SSLContext) -> None:
        # CPython's hook for SSL_CTX_set_msg_callback; it sees each handshake message in clear.
        context._msg_callback = self.on_message  # type: ignore[attr-defined]
        context.client_certificate_watch = self  # type: ignore[attr-defined]

    def on_message(  # the signature CPython calls it with
        self,
        conn: object,
        direction: str,
        version: int,
        content_type: int,
        msg_type: int,
        data: bytes,
    ) -> None:
        key = id(conn)
        asked = self._asked.get(key)
        if direction == "write":
            if asked is not None and content_type == HANDSHAKE and msg_type == CERTIFICATE:
                asked.sent_certificate = len(data) > EMPTY_CERTIFICATE_MESSAGE
            return
        if content_type == HANDSHAKE and msg_type == CERTIFICATE_REQUEST:
            self._remember(key)
        elif asked is not None and _accepted(version, content_type, msg_type):
            del self._asked[key]

    def waiting(self, conn: object) -> bool:
        """Whether `conn` was asked for a certificate and has not heard from the server since."""
        return id(conn) in self._asked

    def take_refusal(self) -> Asked | None:
        """The latest unanswered request for a certificate, forgotten as it is returned: one
        refused connection explains one failure."""
        now = self.clock()
        recent = [(a.at, k) for k, a in self._asked.items() if now - a.at <= self.window]
        return self._asked.pop(max(recent)[1]) if recent else None

    def _remember(self, key: int) -> None:
        now = self.clock()
        if len(self._asked) >= MAX_TRACKED:
            self._asked = {k: a for k, a in self._asked.items() if now - a.at <= self.window}
            while len(self._asked) >= MAX_TRACKED:
                del self._asked[next(iter(self._asked))]
        self._asked[key] = Asked(now)


def _accepted(version: int, content_type: int, msg_type: int) -> bool:
    """Whether this message from the server shows it went on after seeing our certificate."""
    if content_type == HANDSHAKE:
        # TLS 1.2: the server's Finished comes after our certificate. TLS 1.3: its Finished
        # comes before, so only the session ticket it sends once it took ours counts.
        return msg_type == NEW_SESSION_TICKET or (msg_type == FINISHED and version != TLS1_3)
    return content_type == INNER_CONTENT_TYPE and msg_type == APPLICATION_DATA


def watch(context: ssl.SSLContext) -> ssl.SSLContext:
    """`context`, with a watch of its own installed."""
    ClientCertificateWatch().install(context)
    return context


def take_refusal(context: ssl.SSLContext | None) -> Asked | None:
    """A recent refusal seen by the watch installed on `context`, if any."""
    found = getattr(context, "client_certificate_watch", None)
    return found.take_refusal() if isinstance(found, ClientCertificateWatch) else None
