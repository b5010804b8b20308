"""A local Gini simulator (Pay API + User Center) for tests and ``gini-auth-proxy demo``.

It follows Gini's public API documentation (docs/simulator.md); routes under ``/_sandbox/``
are test instruments, not Gini. Anything the reference marks as inferred is commented as such.
"""

from proxy.sandbox.payloads import expected_download_sha256
from proxy.sandbox.server import GiniSimulator
from proxy.sandbox.state import RecordedRequest, SimulatorState

__all__ = ["GiniSimulator", "RecordedRequest", "SimulatorState", "expected_download_sha256"]
