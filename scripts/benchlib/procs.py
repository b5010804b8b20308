"""Child processes of the bench: started in their own session, always stopped on the way out."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the bench itself dies (even by SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Processes:
    """Every process the bench starts; `stop_all` ends them (last started first)."""

    def __init__(self) -> None:
        self._running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        stdout: IO[bytes] | int | None = subprocess.DEVNULL,
        stderr: IO[bytes] | int | None = None,
        env: Mapping[str, str] | None = None,
        quiet: bool = False,
    ) -> subprocess.Popen[bytes]:
        if not quiet:
            print(f"bench: start {name}: {shlex.join(argv)}", flush=True)
        proc = subprocess.Popen(  # noqa: S603 - argv built by the bench, no shell
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            start_new_session=True,  # Ctrl-C reaches the bench only; it stops children itself
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads run while starting
        )
        self._running.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; only this process, by its id."""
        name = "process"
        for index, (known_name, known) in enumerate(self._running):
            if known is proc:
                name = known_name
                del self._running[index]
                break
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"bench: {name} (pid {proc.pid}) ignored SIGTERM; killing it", flush=True)
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        while self._running:
            _, proc = self._running[-1]
            self.stop(proc)


def wait_http(
    url: str,
    proc: subprocess.Popen[bytes],
    what: str,
    headers: Mapping[str, str] | None = None,
    timeout: float = 20.0,
) -> None:
    """Poll `url` until it answers 200; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers=dict(headers or {}))  # noqa: S310 - loopback
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(request, timeout=1) as answer:  # noqa: S310 - loopback
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")
        time.sleep(0.05)


def vm_rss_kib(pid: int) -> int:
    """The process's resident set size (VmRSS) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def child_env(root: Path) -> dict[str, str]:
    """The environment for bench servers run as `python -m benchlib.*`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root / "scripts")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env
