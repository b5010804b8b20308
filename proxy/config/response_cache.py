"""`response_cache`: which GET routes are cached, for how long, and where."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.config.reader import Reader


@dataclass(frozen=True, slots=True)
class CacheRoute:
    template: str
    shared: bool


@dataclass(frozen=True, slots=True)
class ResponseCacheConfig:
    routes: tuple[CacheRoute, ...]
    ttl_seconds: int
    backend: str
    max_entry_bytes: int


def parse_response_cache(r: Reader, data: Mapping[str, Any]) -> ResponseCacheConfig | None:
    keys = ("routes", "ttl_seconds", "backend", "max_entry_bytes")
    d = r.section(data, "response_cache", "response_cache", keys)
    if d is None:
        return None
    routes: list[CacheRoute] = []
    entries = d.get("routes") or []
    if not isinstance(entries, list):
        r.problem("response_cache.routes", "must be a list of path templates")
        entries = []
    for index, entry in enumerate(entries):
        path = f"response_cache.routes[{index}]"
        item = {"path": entry} if isinstance(entry, str) else entry
        if not isinstance(item, Mapping):
            r.problem(path, "must be a path template or {path: ..., shared: true|false}")
            continue
        r.check_keys(item, path, ("path", "shared"))
        template = r.string(item, "path", f"{path}.path")
        if template and not template.startswith("/"):
            r.problem(f"{path}.path", "must start with /")
        routes.append(CacheRoute(template, r.boolean(item, "shared", f"{path}.shared", False)))
    backend = r.string(d, "backend", "response_cache.backend", "memory")
    if not (backend == "memory" or backend.startswith(("sqlite:////", "redis://", "rediss://"))):
        r.problem(
            "response_cache.backend",
            "must be memory, sqlite:////ABSOLUTE/PATH or redis://HOST:PORT/DB",
        )
    return ResponseCacheConfig(
        routes=tuple(routes),
        ttl_seconds=r.integer(d, "ttl_seconds", "response_cache.ttl_seconds", 300, 1, 86400 * 7),
        backend=backend,
        max_entry_bytes=r.integer(
            d, "max_entry_bytes", "response_cache.max_entry_bytes", 1 << 20, 1, 64 << 20
        ),
    )
