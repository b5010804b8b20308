"""A busy demo port: the error names the flags that choose another one."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from proxy import exitcodes
from proxy.commands.demo import busy_port_hint


def test_the_hint_names_both_flags_and_a_command() -> None:
    message = "cannot listen on 127.0.0.1:8080 (listen): address already in use"
    hint = busy_port_hint(message, 8080, 9090)
    assert hint.startswith(message)
    assert "--port 8080 and --admin-port 9090" in hint
    assert "`./scripts/demo --port 8180 --admin-port 9190`" in hint
    assert "--port 65435" in busy_port_hint(message, 65535, 9090)  # stays a valid port
    assert busy_port_hint("the store cannot be opened", 8080, 9090) == "the store cannot be opened"


@pytest.mark.slow
@pytest.mark.parametrize("busy", ["port", "admin-port"])
def test_a_busy_demo_port_names_port_and_admin_port(busy: str) -> None:
    # A subprocess: a demo that failed to start leaves nothing behind in the test process.
    with socket.socket() as taken, socket.socket() as other:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        other.bind(("127.0.0.1", 0))
        ports = {"port": taken.getsockname()[1], "admin-port": other.getsockname()[1]}
        if busy == "admin-port":
            ports = {"port": ports["admin-port"], "admin-port": ports["port"]}
        other.close()  # free: only `busy` is taken
        result = subprocess.run(
            [sys.executable, "-m", "proxy", "demo",
             "--port", str(ports["port"]), "--admin-port", str(ports["admin-port"])],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == exitcodes.STARTUP
    assert f"cannot listen on 127.0.0.1:{ports[busy]}" in result.stderr
    assert f"--port {ports['port']}" in result.stderr
    assert f"--admin-port {ports['admin-port']}" in result.stderr
    assert "./scripts/demo --port" in result.stderr
