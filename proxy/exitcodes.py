"""The process exit codes, part of the contract (docs/design.md): scripts and Kubernetes read
them. Only `proxy.cli` turns exceptions into them; `serve` returns OK or FORCED itself, because
those depend on signals, not on an exception."""

from __future__ import annotations

OK = 0
"""Served and drained (or a command succeeded)."""
FORCED = 1
"""A second signal cut the drain short."""
CHECK_FAILED = 1
"""`doctor`: at least one check failed."""
CONFIG = 2
"""The configuration (or the command line) is invalid: nothing was started."""
STARTUP = 3
"""The configuration is valid but the proxy could not start or finish: a port is taken, the
store is unreachable or its identity key differs, or stored credentials cannot be decrypted."""
