"""The fleet of one replica, built from the config (only with a `fleet` section: this is
where redis-py and cryptography load)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry

from proxy.config import Config
from proxy.config.reload import Reloader, SecretSource, text_value
from proxy.metrics.families import fleet_metrics
from proxy.transport.protection import Guard
from proxy.vending.fleet.flight import Fleet
from proxy.vending.fleet.pauses import SharedPauses
from proxy.vending.fleet.remote import FleetMetrics, Remote
from proxy.vending.fleet.sealing import Sealer


def build_fleet(config: Config, registry: CollectorRegistry) -> Fleet:
    fleet = config.fleet
    assert fleet is not None
    remote = Remote(fleet, FleetMetrics(*fleet_metrics(registry)))
    upstream = config.upstream
    # Longest a holder's fetch can take, retries included: a live holder renews its lease
    # that long; waiting longer means something is wrong, and the waiter fetches alone.
    fetch_budget = (upstream.connect_timeout_seconds + upstream.timeout_seconds) * (
        upstream.max_retries + 1
    )
    return Fleet(
        remote,
        Sealer(config.identity.hmac_key.encode(), fleet.key_prefix),
        fleet.lock_seconds,
        wait_seconds=fleet.lock_seconds + fetch_budget,
    )


def share_pauses(fleet: Fleet, guards: Mapping[str, Guard]) -> SharedPauses:
    """Every guard tells the fleet the pauses it hears, and the fleet's reach every guard."""
    board = SharedPauses(fleet.remote, fleet.remote.config.key_prefix, guards)
    for guard in guards.values():
        guard.board = board
    return board


def watch_password(reloader: Reloader, config: Config, fleet: Fleet) -> None:
    """`fleet.password` read from a file reloads: new connections authenticate with it."""
    password = config.fleet.password if config.fleet is not None else None
    holder = fleet.remote.holder
    if password is None or password.path is None or holder is None:
        return
    reloader.register(
        SecretSource(
            "fleet.password",
            (password.path,),
            text_value,
            password.value,
            holder.use,
            secrets=lambda value: (value,),
        )
    )
