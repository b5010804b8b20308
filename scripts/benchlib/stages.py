"""Charge each py-spy sample of a flow-1 request to one stage of the request path.

A sample's stage is its innermost frame in the proxy's own code (`proxy/...`), mapped by the
rules below; aiohttp work that the proxy called (building the client request, writing the
answer) so counts for the proxy stage that asked for it. Samples with no proxy frame are
aiohttp or the event loop working on their own, charged in passes over the whole stack: the
aiohttp client anywhere in it, else the answer's write, else anything of aiohttp (server loop,
router), else the event loop. The process's entry frames (main, serve) are no stage.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

_SELF_ONLY = "handler (own code)"  # the rule holds for a sample's innermost frame only
# (stage, path fragment, function-name prefixes or () for any): first match wins per frame.
_OWN: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # Parsing runs under the proxy's connection guard, but is aiohttp's work all the same.
    ("parse (server reads the request)", "aiohttp/http_parser.py", ()),
    ("parse (server reads the request)", "aiohttp/web_protocol.py", ("RequestHandler.data_",)),
    ("access log", "proxy/web/accesslog.py", ()),
    ("metrics", "proxy/metrics/__init__.py", ()),
    ("identity", "proxy/identity.py", ()),
    ("header filter", "proxy/forwarding/rewrite.py", ("__call__", "_verdict")),
    ("header filter", "proxy/forwarding/handler.py", ("Forwarder.upstream_headers",)),
    ("URL rewriting", "proxy/forwarding/rewrite.py", ()),
    ("URL rewriting", "proxy/forwarding/handler.py", ("Forwarder.upstream_url",)),
    ("upstream call", "proxy/upstream.py", ()),
    ("upstream call", "proxy/transport/", ()),
    ("relay", "proxy/forwarding/relay.py", ()),
    ("relay", "proxy/forwarding/body.py", ()),
    ("handler (own code)", "proxy/forwarding/", ()),
    # The forwarders' own lines; what they ask of aiohttp is charged as it is for the proxy.
    (_SELF_ONLY, "benchlib/", ()),
    ("wrapper: request id, log scope, errors", "proxy/web/middleware.py", ()),
    ("wrapper: request id, log scope, errors", "proxy/log.py", ()),
    ("wrapper: request id, log scope, errors", "proxy/web/context.py", ()),
    ("wrapper: request id, log scope, errors", "proxy/web/routes.py", ()),
    ("caller connection bounds", "proxy/web/connections.py", ()),
    ("caller connection bounds", "proxy/web/aiohttp_server.py", ()),
    ("caller connection bounds", "proxy/web/targets.py", ()),
    ("caller connection bounds", "proxy/web/expect.py", ()),
    ("proxy, other", "proxy/", ()),
)
# The process's entry frames (main, serve, run) sit under every sample; they are no stage.
_ENTRY_FILES = ("proxy/cli.py", "proxy/__main__.py", "proxy/server.py", "benchlib/loop.py")
_ENTRY_FUNCS = frozenset(("<module>", "main", "serve", "_run_code", "_run_module_as_main"))
# Samples with no proxy frame, in passes over the whole stack: the client's frames first (its
# request goes out through the same writer as the server's answers), then the answer's write,
# then anything else of aiohttp's (its helpers sit innermost under all of these).
_WRITE = "response write (aiohttp, after the handler)"
_PASSES: tuple[tuple[tuple[str, str, tuple[str, ...]], ...], ...] = (
    _OWN,
    (("upstream call", "aiohttp/client", ()), ("upstream call", "aiohttp/connector.py", ())),
    (
        (_WRITE, "aiohttp/web_protocol.py", ("RequestHandler.finish_response",)),
        (_WRITE, "aiohttp/web_response.py", ()),
        (_WRITE, "aiohttp/http_writer.py", ()),
    ),
    (("dispatch (aiohttp server loop, router)", "aiohttp/", ()),),
)
STAGE_ORDER = (
    "parse (server reads the request)",
    "dispatch (aiohttp server loop, router)",
    "wrapper: request id, log scope, errors",
    "identity",
    "header filter",
    "URL rewriting",
    "handler (own code)",
    "upstream call",
    "relay",
    "response write (aiohttp, after the handler)",
    "metrics",
    "access log",
    "caller connection bounds",
    "proxy, other",
    "event loop (uvloop: polling, socket reads)",
)


def _match(frame: str, rules: tuple[tuple[str, str, tuple[str, ...]], ...]) -> str | None:
    func, _, path = frame.rpartition(" (")
    for stage, fragment, prefixes in rules:
        if fragment in path and (not prefixes or func.startswith(prefixes)):
            return stage
    return None


def _entry(frame: str) -> bool:
    func, _, path = frame.rpartition(" (")
    return func in _ENTRY_FUNCS or any(entry in path for entry in _ENTRY_FILES)


def stage_of(frames: list[str]) -> str:
    """The stage of one sample; frames run outermost first, each `function (path)`."""
    inner = [f for f in frames if not _entry(f)]
    for rules in _PASSES:
        for depth, frame in enumerate(reversed(inner)):
            stage = _match(frame, rules)
            if stage is not None and (depth == 0 or stage is not _SELF_ONLY):
                return stage
    return STAGE_ORDER[-1]


def stage_table(samples: Iterable[tuple[list[str], int]], us_per_request: float) -> str:
    """Share of the busy samples and µs per request by stage, in request-path order."""
    counts: Counter[str] = Counter()
    for frames, n in samples:
        counts[stage_of(frames)] += n
    total = sum(counts.values())
    if not total:
        return "no samples"
    out = ["| stage | share | ≈ µs/request |", "|---|---:|---:|"]
    for stage in STAGE_ORDER:
        share = counts[stage] / total
        out.append(f"| {stage} | {100 * share:.1f} % | {share * us_per_request:.0f} |")
    return "\n".join(out)
