"""What a plain proxy loads: PyJWT and cryptography cost about 10 MiB of RSS in every sidecar,
so they load only with a jwt section, TLS files to check, or a credential store."""

from __future__ import annotations

import subprocess
import sys


def printed(code: str) -> str:
    """What `code` prints in a fresh interpreter (nothing imported before it)."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def test_a_basic_mode_proxy_loads_neither_pyjwt_nor_cryptography() -> None:
    code = (
        "import sys, proxy.app, proxy.server, proxy.admin, proxy.cli;"
        "print(sorted(m for m in ('jwt', 'cryptography') if m in sys.modules))"
    )
    assert printed(code) == "[]"


def test_a_proxy_without_tracing_loads_no_opentelemetry() -> None:
    code = (
        "import sys, proxy.app, proxy.server, proxy.admin, proxy.cli, proxy.upstream;"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'opentelemetry', 'google', 'requests'}))"
    )
    assert printed(code) == "[]"


def test_tracing_loads_the_sdk_when_it_starts() -> None:
    # The check above can fail: a configured proxy does load it.
    code = (
        "import sys\n"
        "from proxy.config.tracing import TracingConfig\n"
        "from proxy.telemetry.tracing import Tracing\n"
        "from prometheus_client import CollectorRegistry, Counter\n"
        "config = TracingConfig('http://127.0.0.1:9/v1/traces', (), 0.0, False, 'x')\n"
        "Tracing(config, Counter('d', 'd', registry=CollectorRegistry())).start()\n"
        "print('opentelemetry.sdk' in sys.modules)"
    )
    assert printed(code) == "True"
