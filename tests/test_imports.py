"""What a plain proxy loads: PyJWT and cryptography cost about 10 MiB of RSS in every sidecar,
so they load only with a jwt section, TLS files to check, or a credential store."""

from __future__ import annotations

import subprocess
import sys


def test_a_basic_mode_proxy_loads_neither_pyjwt_nor_cryptography() -> None:
    code = (
        "import sys, proxy.app, proxy.server, proxy.admin, proxy.cli;"
        "print(sorted(m for m in ('jwt', 'cryptography') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
