"""Bounded memos: the one type every hot-path memo uses, and every memo's size in one table.

A memo remembers the result of a pure computation for a key callers choose (a request target,
a user id, a header spelling, a path), so its size must be bounded whatever they send. Past
its size the oldest entry goes first. An `OrderedDict` makes that O(1): evicting from the front
of a plain dict leaves deleted slots that every later `next(iter(...))` has to skip, which
measured 36 µs per eviction at 65,536 entries under churn, against about 1 µs here. A hit is
the dict lookup itself (`get`), no bookkeeping: recency would cost every hit to help a miss
that costs only the computation again.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final, TypeVar

K = TypeVar("K")
V = TypeVar("V")

SIZES: Final[dict[str, int]] = {
    # forwarding.handler: request target -> validated upstream URL (parsing is 1.2 % of a request)
    "upstream_urls": 1024,
    # identity: user id -> X-User-Identifier (one HMAC and a validation per miss); sized for
    # the active users of a replica
    "user_identifiers": 65_536,
    # forwarding.rewrite: header name as spelled -> keep, drop, or a Connection header
    "header_verdicts": 512,
    # web.routes: request path -> route template (paths carry document ids)
    "route_templates": 4096,
    # web.accesslog: route template -> its JSON text, checked for secrets (a few dozen exist)
    "access_log_routes": 1024,
}
"""Every memo's size, by name. docs/performance.md says why each exists and what it saves."""


class Memo(OrderedDict[K, V]):
    """At most `size` entries (from `SIZES`); `get` looks up, `remember` stores."""

    __slots__ = ("name", "size")

    def __init__(self, name: str, size: int | None = None):
        super().__init__()
        self.name = name
        self.size = SIZES[name] if size is None else size
        if self.size < 1:
            raise ValueError(f"memo {name!r}: size must be at least 1, not {self.size}")

    def remember(self, key: K, value: V) -> V:
        """Store `value` under `key` (the oldest entry out first when full); returns `value`."""
        if key not in self and len(self) >= self.size:
            self.popitem(last=False)
        self[key] = value
        return value
