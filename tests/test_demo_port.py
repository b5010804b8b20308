"""A busy demo port: the error names the flags that choose another one."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import pytest

from proxy import exitcodes
from proxy.cli import main


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("busy", ["port", "admin-port"])
def test_a_busy_demo_port_names_port_and_admin_port(
    busy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken, socket.socket() as other:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        other.bind(("127.0.0.1", 0))
        ports = {"port": taken.getsockname()[1], "admin-port": other.getsockname()[1]}
        if busy == "admin-port":
            ports = {"port": ports["admin-port"], "admin-port": ports["port"]}
        other.close()  # free: only `busy` is taken
        argv = ["demo", "--port", str(ports["port"]), "--admin-port", str(ports["admin-port"])]
        assert main(argv) == exitcodes.STARTUP
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{ports[busy]}" in err
    assert f"--port {ports['port']}" in err
    assert f"--admin-port {ports['admin-port']}" in err
    assert "./scripts/demo --port" in err
