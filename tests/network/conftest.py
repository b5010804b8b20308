"""Every test in this folder talks HTTPS: a CA made per test and a TLS Gini simulator signed
by it, replacing the plain-HTTP simulator of tests/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.sandbox import GiniSimulator

from .support import Pki, make_pki, tls_simulator


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


@pytest.fixture
async def sim(pki: Pki) -> AsyncIterator[GiniSimulator]:
    async with tls_simulator(pki.server_context()) as simulator:
        yield simulator
