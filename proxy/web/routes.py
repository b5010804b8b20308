"""Path templates of the Gini API, for bounded metric labels and the response-cache allow-list.

A raw path holds document ids, so it must never become a label: `route_template` maps it to a
known template (`/documents/{id}`) or to `other`, whatever a caller sends.
"""

from __future__ import annotations

from proxy.config.memo import Memo

OTHER = "other"

# Pay API (and Health API) resources a proxy sees, from the reference and the Gini SDKs.
GINI_TEMPLATES = (
    "/login",
    "/documents",
    "/documents/{id}",
    "/documents/{id}/extractions",
    "/documents/{id}/extractions/feedback",
    "/documents/{id}/extractions/{name}",
    "/documents/{id}/layout",
    "/documents/{id}/pages",
    "/documents/{id}/pages/{page}/{size}",
    "/documents/{id}/processed",
    "/documents/{id}/file",
    "/paymentRequests",
    "/paymentRequests/{id}",
    "/paymentRequests/{id}/payment",
    "/payments/{id}",
    "/paymentProviders",
    "/paymentProviders/{id}",
    "/configurations",
    "/events/error",
    "/events/batch",
)


def _segments(path: str) -> tuple[str, ...]:
    return tuple(path.strip("/").split("/")) if path.strip("/") else ()


class RouteTable:
    """Matches paths to templates; `{name}` matches exactly one non-empty segment."""

    __slots__ = ("_by_shape", "_memo")

    def __init__(self, templates: tuple[str, ...] | list[str]):
        # Keyed by (first segment, segment count): a lookup compares against a handful at most.
        self._by_shape: dict[tuple[str, int], list[tuple[tuple[str, ...], str]]] = {}
        for template in templates:
            segments = _segments(template)
            key = (segments[0] if segments else "", len(segments))
            self._by_shape.setdefault(key, []).append((segments, template))
        self._memo: Memo[str, str] = Memo("route_templates")  # paths carry ids
        for candidates in self._by_shape.values():
            # Literal segments win over placeholders (`/extractions/feedback` before `/{name}`).
            candidates.sort(key=lambda c: sum(s.startswith("{") for s in c[0]))

    def match(self, path: str) -> str:
        """The template for `path` (a trailing slash is ignored), or `other`."""
        found = self._memo.entries.get(path)
        if found is None:
            found = self._memo.remember(path, self._match(path))
        return found

    def _match(self, path: str) -> str:
        segments = _segments(path)
        candidates = self._by_shape.get((segments[0] if segments else "", len(segments)))
        if candidates:
            for pattern, template in candidates:
                for want, got in zip(pattern, segments, strict=True):
                    if not (want == got or (want[:1] == "{" and got)):
                        break
                else:
                    return template
        return OTHER
