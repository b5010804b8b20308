"""Bounded memos: the one type every hot-path memo uses, and every memo's size in one table.

A memo remembers the result of a pure computation for a key callers choose (a request target,
a user id, a header spelling, a path), so its size must be bounded whatever they send. Past
its size the oldest entry goes first. A hit is a plain dict lookup (`get`), with no bookkeeping:
recency would cost every hit to help a miss that costs only the computation again.

The order of insertion is kept in a deque beside the dict: evicting by `next(iter(...))` from
the front of a dict leaves deleted slots that every later eviction has to skip (36 µs per
eviction at 65,536 entries under churn).
"""

from __future__ import annotations

from collections import deque
from typing import Final, Generic, TypeVar

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


class Memo(Generic[K, V]):
    """At most `size` entries (from `SIZES`): look up with `memo.entries.get(key)`, store with
    `memo.remember(key, value)`.

    `entries` is a plain dict on purpose: CPython 3.11 specialises a call of `dict.get` only on
    an exact dict, so a dict subclass (or an `OrderedDict`) paid 165-275 instructions more per
    hit, and a bound `get` attribute about 130 (callgrind).
    """

    __slots__ = ("_order", "entries", "name", "size")

    def __init__(self, name: str, size: int | None = None):
        self.name = name
        self.size = SIZES[name] if size is None else size
        if self.size < 1:
            raise ValueError(f"memo {name!r}: size must be at least 1, not {self.size}")
        self.entries: dict[K, V] = {}
        self._order: deque[K] = deque()

    def remember(self, key: K, value: V) -> V:
        """Store `value` under `key` (the oldest entry out first when full); returns `value`."""
        entries = self.entries
        if key not in entries:
            if len(entries) >= self.size:
                del entries[self._order.popleft()]
            self._order.append(key)
        entries[key] = value
        return value

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def items(self) -> list[tuple[K, V]]:
        """The entries, oldest first."""
        return [(key, self.entries[key]) for key in self._order]
