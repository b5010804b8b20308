"""The audit log: one JSON line per action on a Gini account, never sampled.

Records wait in memory for at most FLUSH_SECONDS (10 ms), then all that arrived meanwhile are
written with one `os.write` on a file opened `O_APPEND` (0600): a line is never split between
writers. (Writing at the end of each loop turn instead cost 8 µs per flow-1 request on the
benchmark machine, 4 % of it: under load a turn holds only a record or two. A record per
write cost more still.) A request's own record is formatted at that write too, the batch in
one go. The file is reopened when it is rotated away (renamed, deleted or replaced): before
each write the path is compared with the open file (one `stat`), so no record goes to a file
that was deleted, and a renamed one keeps only whole lines. A write that fails marks the log
unhealthy until the file can be opened again; with `required`, `ready` is then false and the
actions it would record are refused before anything reaches Gini (`AuditUnavailable`).
Shutdown writes what is waiting; a `kill -9` loses at most the last 10 ms of records.

What a request's records hold is gathered in its `scope.AuditScope`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Protocol

from prometheus_client import Counter

from proxy.config.audit import AuditConfig
from proxy.errors import ProxyError
from proxy.log import REDACTED, Timestamps

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


FLUSH_SECONDS = 0.01  # how long a record waits in memory at most: 100 writes a second at most
FLUSH_RECORDS = 1024  # or until this many are waiting (about 300 KiB)


class AuditUnavailable(ProxyError):
    status = 503
    code = "audit_unavailable"
    default_message = "The audit log cannot be written, so this action is refused; try later."
    retry_after = "5"


def outcome(status: int) -> str:
    """`ok` below 400, `refused` for the caller's or the proxy's no (4xx), `error` for
    everything else."""
    if 400 <= status < 500:
        return "refused"
    return "ok" if status < 400 else "error"


class RequestFacts(Protocol):
    """What a request's record takes from its scope (`scope.AuditScope`)."""

    action: str
    request_id: str
    trace_id: str | None
    caller: str | None
    method: str
    route: str
    source: str | None


_Request = tuple[float, RequestFacts, str | None, int, float]  # `requested`'s record, to format


class AuditLog:
    """The writer. Everything runs on the event loop's thread."""

    def __init__(
        self,
        config: AuditConfig,
        records: Counter,
        errors: Counter,
    ):
        self.path: Path | None = config.path
        self._where = str(config.path)  # what `stat` takes without a call to __fspath__
        self.required = config.required
        self.secrets: tuple[str, ...] = ()  # values no record may show (request ids are chosen)
        self._records = {action: records.labels(action) for action in ACTIONS}
        self._errors = errors
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the open file
        self.healthy = True
        self._timestamp = Timestamps().at  # a bound method: the cheapest call per line
        self._lines: list[bytes | _Request] = []  # records waiting for `flush`
        self._actions: dict[str, int] = {}  # and how many of each action they are

    def open(self) -> None:
        """Open (or create, 0600) the file; a failure leaves the log unhealthy, not raised."""
        if self.path is None:
            self._fd = sys.stdout.fileno()
            return
        self._reopen()

    def close(self) -> None:
        """Write what is pending, then close the file."""
        self.flush()
        self._close_file()

    def _close_file(self) -> None:
        if self._fd is not None and self.path is not None:
            os.close(self._fd)
        self._fd = None

    def _reopen(self) -> bool:
        assert self.path is not None
        self._close_file()
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
            stat = os.stat(self._where)
            if self._fd is not None and (stat.st_dev, stat.st_ino) == self._identity:
                return True
        except OSError:
            pass  # gone (rotated away): reopen creates it
        return self._reopen()

    def ready(self) -> bool:
        """Can a record be written now? (`required` asks before an action starts.)"""
        return self._current() and self.healthy

    def write(
        self,
        action: str,
        request_id: str | None,
        trace_id: str | None,
        caller: str | None,
        user: str | None,
        method: str | None,
        route: str | None,
        status: int | None,
        source: str | None,
        result: str,
        seconds: float,
    ) -> None:
        """Write one record (its `time` is taken here); counts it, or counts the failure."""
        if request_id is not None:  # chosen by the caller: it may hold a secret
            for secret in self.secrets:
                if secret in request_id:
                    request_id = REDACTED
                    break
        # Formatted by hand around json's own string quoting (inline, not through a helper:
        # each Python call is a few hundred instructions): json.dumps of the record as a dict
        # cost about 10 µs, a fifth of the audit log's cost per request.
        q = encode_basestring_ascii
        line = (
            f'{{"time": "{self._timestamp(time.time())}", "action": "{action}", '
            f'"request_id": {"null" if request_id is None else q(request_id)}, '
            f'"trace_id": {"null" if trace_id is None else q(trace_id)}, '
            f'"caller": {"null" if caller is None else q(caller)}, '
            f'"user": {"null" if user is None else q(user)}, '
            f'"method": {"null" if method is None else q(method)}, '
            f'"route": {"null" if route is None else q(route)}, '
            f'"status": {"null" if status is None else status}, '
            f'"source": {"null" if source is None else q(source)}, "outcome": "{result}", '
            f'"duration_ms": {seconds * 1000:.3f}}}\n'
        ).encode()
        self._queue(action, line)

    def requested(self, scope: RequestFacts, user: str | None, status: int, seconds: float) -> None:
        """Queue the record of a request's own action; it is formatted when the batch is
        written (`_request_line`), one record after another, with that code still in the CPU's
        caches: about 4 µs per record less than formatting each when its request ends."""
        self._queue(scope.action, (time.time(), scope, user, status, seconds))

    def _request_line(
        self, when: float, scope: RequestFacts, user: str | None, status: int, seconds: float
    ) -> bytes:
        """A request's record. Every text in it but the route is validated to characters JSON
        needs no escaping for: request ids (`REQUEST_ID`), caller names, methods from a fixed
        set, hex trace ids and identifiers; so only the route is quoted by json (a third less
        than `write`)."""
        request_id = scope.request_id
        for secret in self.secrets:  # chosen by the caller: it may hold a secret
            if secret in request_id:
                request_id = REDACTED
                break
        action, trace_id, caller = scope.action, scope.trace_id, scope.caller
        source = scope.source if action.startswith("token.") else None
        traced = "null" if trace_id is None else f'"{trace_id}"'
        named = "null" if caller is None else f'"{caller}"'
        derived = "null" if user is None else f'"{user}"'
        told = "null" if source is None else f'"{source}"'
        return (
            f'{{"time": "{self._timestamp(when)}", "action": "{action}", '
            f'"request_id": "{request_id}", "trace_id": {traced}, "caller": {named}, '
            f'"user": {derived}, "method": "{scope.method}", '
            f'"route": {encode_basestring_ascii(scope.route)}, "status": {status}, '
            f'"source": {told}, "outcome": "{outcome(status)}", '
            f'"duration_ms": {seconds * 1000:.3f}}}\n'
        ).encode()

    def _queue(self, action: str, line: bytes | _Request) -> None:
        lines = self._lines
        lines.append(line)
        self._actions[action] = self._actions.get(action, 0) + 1
        if len(lines) == 1:  # the first of a batch: it is written FLUSH_SECONDS from now
            try:
                asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (a command such as rotate-key): at once
                self.flush()
        elif len(lines) >= FLUSH_RECORDS:
            self.flush()  # the armed timer then finds nothing to write

    def flush(self) -> None:
        """Write the pending records; counts them, or counts them lost."""
        if not self._lines:
            return
        lines, actions, count = self._lines, self._actions, len(self._lines)
        self._lines, self._actions = [], {}
        data = b"".join(
            [line if type(line) is bytes else self._request_line(*line) for line in lines]
        )
        if not self._current():
            self._errors.inc(count)
            return
        assert self._fd is not None
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as exc:
            self._errors.inc(count)
            self._failed(exc)
            self._close_file()  # the next check reopens
            return
        for action, written in actions.items():
            self._records[action].inc(written)

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
        self.write(action, None, None, None, None, None, route, None, None, result, seconds)

    def _failed(self, exc: OSError) -> None:
        if self.healthy:  # once per episode, not once per record
            log.error(
                "the audit log cannot be written: %s",
                exc.strerror,
                extra={"path": str(self.path), "required": self.required},
            )
        self.healthy = False
