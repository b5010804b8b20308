"""The audit log: one JSON line per action on a Gini account, never sampled.

Each record is written with one `os.write` on a file opened `O_APPEND` (0600), so a line is
never split between writers or lost in a buffer when the process dies. The file is reopened
when it is rotated away (renamed, deleted or replaced): before each record the path is
compared with the open file (one `stat`, about a microsecond), so no record goes to a file
that was deleted, and a renamed one keeps only whole lines. A write that fails marks the log
unhealthy until the file can be opened again; with `required`, `ready` is then false and the
actions it would record are refused before anything reaches Gini (`AuditUnavailable`).

Sub-actions of a request (an anonymous user created while its token is fetched) are written
through the request's `AuditScope`, found in a context variable the observer sets, so the
flow code needs no handle on the request.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextvars import ContextVar
from pathlib import Path

from prometheus_client import Counter

from proxy.config.audit import AuditConfig
from proxy.errors import ProxyError
from proxy.log import REDACTED

log = logging.getLogger("proxy.audit")

ENDPOINT_ACTIONS = {
    ("POST", "/_proxy/tokens/derived"): "token.derived",
    ("POST", "/_proxy/tokens/anonymous"): "token.anonymous",
    ("DELETE", "/_proxy/users/anonymous"): "user.erase",
}
"""The proxy's own endpoints that act on a Gini account; every other path not under
`/_proxy/` is a `forward`."""
ACTIONS = (
    "forward",
    "token.derived",
    "token.anonymous",
    "user.create",
    "user.erase",
    "secret.reload",
    "store.rotate",
)


class AuditUnavailable(ProxyError):
    status = 503
    code = "audit_unavailable"
    default_message = "The audit log cannot be written, so this action is refused; try later."
    retry_after = "5"


def outcome(status: int, refused: bool = False) -> str:
    """`ok` below 400, `refused` for the caller's or the proxy's no (4xx, or `refused`),
    `error` for everything else."""
    if refused or 400 <= status < 500:
        return "refused"
    return "ok" if status < 400 else "error"


class AuditLog:
    """The writer. Everything runs on the event loop's thread."""

    def __init__(
        self,
        config: AuditConfig,
        records: Counter,
        errors: Counter,
    ):
        self.path: Path | None = config.path
        self.required = config.required
        self.secrets: tuple[str, ...] = ()  # values no record may show (request ids are chosen)
        self._records = {action: records.labels(action) for action in ACTIONS}
        self._errors = errors
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the open file
        self.healthy = True
        self._second = -1
        self._stamp = ""

    def open(self) -> None:
        """Open (or create, 0600) the file; a failure leaves the log unhealthy, not raised."""
        if self.path is None:
            self._fd = sys.stdout.fileno()
            return
        self._reopen()

    def close(self) -> None:
        if self._fd is not None and self.path is not None:
            os.close(self._fd)
        self._fd = None

    def _reopen(self) -> bool:
        assert self.path is not None
        self.close()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._failed(exc)
            return False
        if not self.healthy:
            log.warning("the audit log is written again", extra={"path": str(self.path)})
            self.healthy = True
        stat = os.fstat(fd)
        self._fd, self._identity = fd, (stat.st_dev, stat.st_ino)
        return True

    def _current(self) -> bool:
        """The open file is still the one at the path, or was reopened there."""
        if self.path is None:
            return self._fd is not None
        try:
            stat = os.stat(self.path)
            if self._fd is not None and (stat.st_dev, stat.st_ino) == self._identity:
                return True
        except OSError:
            pass  # gone (rotated away): reopen creates it
        return self._reopen()

    def ready(self) -> bool:
        """Can a record be written now? (`required` asks before an action starts.)"""
        return self._current() and self.healthy

    def write(self, record: dict[str, object]) -> None:
        """Write one record (its `time` is added here); counts it, or counts the failure."""
        action = str(record["action"])
        request_id = record.get("request_id")
        if isinstance(request_id, str) and any(s in request_id for s in self.secrets):
            record["request_id"] = REDACTED
        line = (json.dumps({"time": self._timestamp(time.time()), **record}) + "\n").encode()
        if not self._current():
            self._errors.inc()
            return
        assert self._fd is not None
        try:
            while line:
                line = line[os.write(self._fd, line) :]
        except OSError as exc:
            self._errors.inc()
            self._failed(exc)
            self.close()  # the next check reopens
            return
        self._records[action].inc()

    def reloaded(self, config_key: str, result: str, seconds: float) -> None:
        """A `secret.reload` record for a new value applied or refused by Gini (a file that
        cannot be read, or holds no change, acts on nothing: the reload metrics count those).
        `route` names the config key."""
        if result in ("applied", "rejected"):
            self.unrequested(
                "secret.reload", config_key, "ok" if result == "applied" else "refused", seconds
            )

    def unrequested(self, action: str, route: str | None, result: str, seconds: float) -> None:
        """A record of an action no request asked for (`secret.reload`, `store.rotate`): no
        request id, caller, user, method or status."""
        self.write(
            {
                "action": action,
                "request_id": None,
                "trace_id": None,
                "caller": None,
                "user": None,
                "method": None,
                "route": route,
                "status": None,
                "source": None,
                "outcome": result,
                "duration_ms": round(seconds * 1000, 3),
            }
        )

    def _failed(self, exc: OSError) -> None:
        if self.healthy:  # once per episode, not once per record
            log.error(
                "the audit log cannot be written: %s",
                exc.strerror,
                extra={"path": str(self.path), "required": self.required},
            )
        self.healthy = False

    def _timestamp(self, now: float) -> str:
        second = int(now)
        if second != self._second:  # RFC 3339 UTC with milliseconds; the date once a second
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"


class AuditScope:
    """One request's audit facts, filled in as it runs; written by `finish`."""

    __slots__ = ("action", "audit", "caller", "method", "request_id", "route", "source", "trace_id")

    def __init__(self, audit: AuditLog, action: str, request_id: str, method: str, route: str):
        self.audit = audit
        self.action = action
        self.request_id = request_id
        self.method = method
        self.route = route
        self.caller: str | None = None
        self.trace_id: str | None = None
        self.source: str | None = None

    def record(
        self, action: str, user: str | None, status: int, result: str, seconds: float
    ) -> None:
        self.audit.write(
            {
                "action": action,
                "request_id": self.request_id,
                "trace_id": self.trace_id,
                "caller": self.caller,
                "user": user,
                "method": self.method,
                "route": self.route,
                "status": status,
                "source": self.source if action.startswith("token.") else None,
                "outcome": result,
                "duration_ms": round(seconds * 1000, 3),
            }
        )


SCOPE: ContextVar[AuditScope | None] = ContextVar("gini_proxy_audit_scope", default=None)


def note_source(source: str) -> None:
    """Where the request's token came from, for its record: the token cache's `cache`, `fleet`
    or `upstream` (recorded as `gini`)."""
    scope = SCOPE.get()
    if scope is not None:
        scope.source = "gini" if source == "upstream" else source


def record_sub_action(
    action: str, user: str, status: int, started: float, result: str | None = None
) -> None:
    """A record for an action taken inside the current request (`user.create`)."""
    scope = SCOPE.get()
    if scope is not None:
        seconds = time.perf_counter() - started
        scope.record(action, user, status, result or outcome(status), seconds)
