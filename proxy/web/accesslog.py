"""The access log: one JSON line per request, written without the `logging` machinery.

A line through `logging` cost about 114 µs on the benchmark machine (LogRecord, formatter,
a redaction regex over the whole line, a write and flush per line) against a request budget
of a few hundred. Every field here is either produced by the proxy or validated, so the line
needs no pattern redaction; known secret values are still checked for in the fields others
choose: the request ids (a caller could send a secret as its own) and the route templates
(from config), each template once. Lines are buffered and flushed by a loop timer, at 256
lines, and at shutdown, to the output stream `log.configure_logging` set up (nowhere until it
is called, and nowhere when the level is above info).
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from proxy.config.memo import Memo
from proxy.log import REDACTED, Timestamps, access_stream
from proxy.metrics import METHODS
from proxy.web.context import REQUEST_ID, RequestContext

FLUSH_SECONDS = 0.1
FLUSH_LINES = 256


class AccessLog:
    """Buffers access lines for one output stream."""

    def __init__(self, secrets: tuple[str, ...]):
        self._secrets: tuple[str, ...] = ()
        self._routes: Memo[str, str] = Memo("access_log_routes")
        self.secrets = secrets
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timestamp = Timestamps().at  # a bound method: the cheapest call per line

    @property
    def secrets(self) -> tuple[str, ...]:
        """The values no line may show (a reload adds the ones it reads)."""
        return self._secrets

    @secrets.setter
    def secrets(self, values: tuple[str, ...]) -> None:
        self._secrets = tuple(s for s in values if len(s) >= 4)
        self._routes = Memo("access_log_routes")

    def _route(self, route: str) -> str:
        """`route` as a JSON string (templates come from config too: escaped, once each)."""
        text = json.dumps(route)
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return self._routes.remember(route, text)

    def write(self, request: web.Request, ctx: RequestContext, status: int, seconds: float) -> None:
        # Formatted by hand: every string here is validated to characters that need no JSON
        # escaping (request ids and Gini's by REQUEST_ID, methods from a fixed set, routes from the
        # route table), so json.dumps would only cost time. The test suite parses the lines.
        request_id = ctx.request_id
        gini_id = ctx.gini_request_id
        chosen = request_id  # the values others chose, to check for secrets
        if gini_id is not None and REQUEST_ID.fullmatch(gini_id):
            gini = f'"{gini_id}"'
            chosen = f"{request_id}\n{gini_id}"  # a newline: no secret spans the two
        else:
            gini = "null"
        route = self._routes.entries.get(ctx.route) or self._route(ctx.route)
        upstream = ctx.upstream_seconds
        bytes_in = request.content_length
        caller = "null" if ctx.caller is None else f'"{ctx.caller}"'  # CALLER_NAME: no escaping
        line = (
            f'{{"timestamp": "{self._timestamp(time.time())}", "level": "info", '
            f'"logger": "proxy.access", "message": "request", "request_id": "{request_id}", '
            f'"gini_request_id": {gini}, '
            f'"method": "{request.method if request.method in METHODS else "other"}", '
            f'"route": {route}, "status": {status}, '
            f'"caller": {caller}, '
            f'"duration_ms": {seconds * 1000:.3f}, '
            f'"upstream_ms": {"null" if upstream is None else f"{upstream * 1000:.3f}"}, '
            f'"bytes_in": {"null" if bytes_in is None else bytes_in}, '
            f'"bytes_out": {ctx.bytes_out or "null"}}}'
        )
        for secret in self._secrets:  # 32 characters to scan instead of a whole line
            if secret in chosen:
                line = line.replace(secret, REDACTED)
        self._lines.append(line)
        if len(self._lines) >= FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        """Write out what is buffered (also called at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            lines, self._lines = self._lines, []
            stream = access_stream()
            if stream is not None:
                stream.write("\n".join(lines) + "\n")
                stream.flush()
