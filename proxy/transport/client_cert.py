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
import weakref
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
    and that heard nothing more from it (for `window` seconds).

    OpenSSL calls it for every TLS record, about 4 µs per request and answer here: so unless
    `retire` is False it uninstalls itself after the first handshake that settles the question
    (the server did not ask, or took the certificate). A context rebuilt after a rotation of
    the TLS files gets a new watch.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        window: float = WINDOW_SECONDS,
        retire: bool = True,
    ):
        self.clock = clock
        self.window = window
        self.retire = retire
        self.retired = False
        self._asked: dict[int, Asked] = {}
        self._context: Callable[[], ssl.SSLContext | None] = lambda: None

    def install(self, context: ssl.SSLContext) -> None:
        _set_callback(context, self.on_message)
        context.client_certificate_watch = self  # type: ignore[attr-defined]
        self._context = weakref.ref(context)  # the context holds the watch: no cycle

    def on_message(  # the signature CPython calls it with, all ints but `direction`
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
            if content_type == HANDSHAKE and msg_type == CERTIFICATE and asked is not None:
                asked.sent_certificate = len(data) > EMPTY_CERTIFICATE_MESSAGE
            elif content_type == HANDSHAKE and msg_type == FINISHED and asked is None:
                self._settled()  # our Finished, and no CertificateRequest before it
            return
        if content_type == HANDSHAKE and msg_type == CERTIFICATE_REQUEST:
            self._remember(key)
        elif asked is not None and _accepted(version, content_type, msg_type):
            del self._asked[key]
            self._settled()

    def _settled(self) -> None:
        context = self._context()
        if self.retire and not self.retired and context is not None:
            self.retired = True
            _set_callback(context, None)

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


def _set_callback(context: ssl.SSLContext, callback: Callable[..., None] | None) -> None:
    """Set OpenSSL's message callback (SSL_CTX_set_msg_callback) through CPython's C-level
    `_msg_callback`, as `ssl.SSLContext`'s own property does, but without its wrapper, which
    turns every number into an enum on every record and costs several times more."""
    descriptor = super(ssl.SSLContext, ssl.SSLContext)._msg_callback  # type: ignore[misc]
    descriptor.__set__(context, callback)


def watch(context: ssl.SSLContext) -> ssl.SSLContext:
    """`context`, with a watch of its own installed."""
    ClientCertificateWatch().install(context)
    return context


def take_refusal(context: ssl.SSLContext | None) -> Asked | None:
    """A recent refusal seen by the watch installed on `context`, if any."""
    found = getattr(context, "client_certificate_watch", None)
    return found.take_refusal() if isinstance(found, ClientCertificateWatch) else None
