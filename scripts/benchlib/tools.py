"""External tools the bench needs (wrk, optionally nginx), installed from Debian when missing."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess


def _run(argv: list[str]) -> bool:
    print(f"bench: running: {shlex.join(argv)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(argv, env=env, check=False)  # noqa: S603 - fixed argv
    return done.returncode == 0


def ensure_tool(command: str, package: str, search: tuple[str, ...] = ()) -> str | None:
    """The absolute path of `command`, installing Debian `package` with apt-get if needed."""
    found = shutil.which(command) or next((p for p in search if os.access(p, os.X_OK)), None)
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        print(f"bench: {command} is missing and cannot be installed here (needs root and apt-get)")
        return None
    print(f"bench: {command} is missing; installing the Debian package {package!r}", flush=True)
    if not _run([apt, "install", "-y", "-q", "--no-install-recommends", package]):
        _run([apt, "update", "-q"])
        _run([apt, "install", "-y", "-q", "--no-install-recommends", package])
    return shutil.which(command) or next((p for p in search if os.access(p, os.X_OK)), None)


def version_of(argv: list[str]) -> str:
    """First line a tool prints for its version flag (stdout or stderr)."""
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv
            argv, capture_output=True, text=True, check=False, timeout=10
        )
    except OSError:
        return "?"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"
