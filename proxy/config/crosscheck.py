"""Checks across sections: settings each valid alone that `serve` would still trip on.

`check-config` exists so a deploy fails before the rollout, not at the first bind; these are
the mistakes only a combination of keys makes.
"""

from __future__ import annotations

import ipaddress

from proxy.config.model import Address, UpstreamConfig
from proxy.config.reader import Reader

_WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104 - compared with, never bound


def listeners_collide(a: Address, b: Address) -> bool:
    """Would binding `b` fail because `a` holds the port? Port 0 is a fresh port each time.

    Two different IP literals share a port fine; a wildcard takes the port on every address
    (`::` dual-stack, so on IPv4 ones too), and a host name may resolve to the other one."""
    if a.port != b.port or a.port == 0:
        return False
    if a.host == b.host or a.host in _WILDCARDS or b.host in _WILDCARDS:
        return a.host == b.host or _same_family_or_dual(a.host, b.host)
    try:
        return ipaddress.ip_address(a.host) == ipaddress.ip_address(b.host)
    except ValueError:
        return True  # a name (localhost): it may well be the other address


def _same_family_or_dual(a: str, b: str) -> bool:
    """0.0.0.0 takes every IPv4 address only; `::` takes both families."""
    wildcard, other = (a, b) if a in _WILDCARDS else (b, a)
    if wildcard != "0.0.0.0":  # noqa: S104
        return True
    try:
        return ipaddress.ip_address(other).version == 4
    except ValueError:
        return True


def check_listeners(r: Reader, listeners: dict[str, Address]) -> None:
    """Every pair of listeners that could not both bind is a problem of the later key."""
    named = list(listeners.items())
    for index, (key, address) in enumerate(named):
        for earlier, other in named[:index]:
            if listeners_collide(other, address):
                r.problem(
                    key,
                    f"must differ from {earlier}: {address} and {other} share port "
                    f"{address.port}, so `serve` could not bind both; give each its own port",
                )


def check_upstream_tls(r: Reader, upstream: UpstreamConfig) -> None:
    """`upstream.tls` only applies to https:// upstreams: set with none, it is a mistake
    (a CA or client certificate the operator believes in, but never presented)."""
    urls = (upstream.pay_api, upstream.user_center)
    if upstream.tls is not None and not any(u.startswith("https://") for u in urls):
        r.problem(
            "upstream.tls",
            "is set but upstream.pay_api and upstream.user_center are both http:// URLs, so "
            "it would never be used; use https:// URLs or remove upstream.tls",
        )
