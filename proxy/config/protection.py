"""`upstream.protection`: how the proxy shields Gini from its callers and its callers from a
struggling Gini (the rules are in `proxy.transport.protection`).

On by default: an absent section gives the defaults below, which suit production. Each key is
bounded so that no value turns a protection into a trap (a zero queue would shed every call
that finds the slots busy, a zero open time would make the breaker useless).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.config.reader import Reader

PATH = "upstream.protection"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_ratio: float = 0.5  # share of failed calls in the window that opens the breaker
    min_calls: int = 20  # calls in the window before the breaker may open
    window_seconds: float = 10.0
    open_seconds: float = 5.0  # then one probe call decides


@dataclass(frozen=True, slots=True)
class ProtectionConfig:
    max_in_flight: int = 512  # per upstream, per replica
    queue_seconds: float = 1.0  # longest wait for a slot, then 503 upstream_busy
    honor_retry_after: bool = True  # a 429/503 with Retry-After pauses calls to that upstream
    max_pause_seconds: float = 60.0  # a longer Retry-After is capped
    retry_budget_ratio: float = 0.2  # automatic retries: at most this share of calls (10 s)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)


def parse_protection(r: Reader, upstream: Mapping[str, Any]) -> ProtectionConfig:
    """Read `upstream.protection` (the defaults when absent); every problem is recorded."""
    keys: tuple[str, ...] = (
        "max_in_flight",
        "queue_seconds",
        "honor_retry_after",
        "max_pause_seconds",
    )
    keys += ("retry_budget_ratio", "breaker")
    d = r.section(upstream, "protection", PATH, keys) or {}
    base = ProtectionConfig()
    return ProtectionConfig(
        max_in_flight=r.integer(
            d, "max_in_flight", f"{PATH}.max_in_flight", base.max_in_flight, 1, 1_000_000
        ),
        queue_seconds=r.number(
            d, "queue_seconds", f"{PATH}.queue_seconds", base.queue_seconds, 0, 600
        ),
        honor_retry_after=r.boolean(
            d, "honor_retry_after", f"{PATH}.honor_retry_after", base.honor_retry_after
        ),
        max_pause_seconds=r.number(
            d, "max_pause_seconds", f"{PATH}.max_pause_seconds", base.max_pause_seconds, 1, 3600
        ),
        retry_budget_ratio=r.number(
            d, "retry_budget_ratio", f"{PATH}.retry_budget_ratio", base.retry_budget_ratio, 0, 1
        ),
        breaker=_breaker(r, d),
    )


def _breaker(r: Reader, d: Mapping[str, Any]) -> BreakerConfig:
    path = f"{PATH}.breaker"
    keys = ("failure_ratio", "min_calls", "window_seconds", "open_seconds")
    b = r.section(d, "breaker", path, keys) or {}
    base = BreakerConfig()
    return BreakerConfig(
        # Above zero: a ratio of 0 would open the breaker on a window without any failure.
        failure_ratio=r.number(
            b, "failure_ratio", f"{path}.failure_ratio", base.failure_ratio, 0.01, 1
        ),
        min_calls=r.integer(b, "min_calls", f"{path}.min_calls", base.min_calls, 1, 1_000_000),
        window_seconds=r.number(
            b, "window_seconds", f"{path}.window_seconds", base.window_seconds, 1, 3600
        ),
        open_seconds=r.number(
            b, "open_seconds", f"{path}.open_seconds", base.open_seconds, 0.1, 3600
        ),
    )
