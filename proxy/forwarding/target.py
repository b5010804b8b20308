"""What a request target may name before it is appended to the Pay API base (pure).

The target is appended to the base as text, never resolved, so a `..` cannot leave the host;
but Gini (or anything in front of it) may still resolve `/pay/../x` to `/x`, outside the
configured path prefix. So a path with a `.` or `..` segment is refused, in any spelling a
server might resolve: raw or percent-encoded dots in any case (`%2e`, `%2E`, `.%2e`), segments
separated by `/`, `\\`, `%2f` or `%5c`, and a segment ending in `;params` (`..;/`).
"""

from __future__ import annotations

import re

# A separator, then one or two dots, then the end of the segment: another separator, `;`
# (path parameters) or the end of the path. The query is cut off before this is applied.
_DOT_SEGMENT = re.compile(
    r"(?:/|\\|%2f|%5c)(?:\.|%2e){1,2}(?=/|\\|%2f|%5c|;|\Z)", re.IGNORECASE | re.ASCII
)


def has_dot_segment(raw_target: str) -> bool:
    """Whether the path of `raw_target` (an origin-form target, query ignored) has a `.` or
    `..` segment in any spelling."""
    path = raw_target.partition("?")[0]
    return _DOT_SEGMENT.search(path) is not None
