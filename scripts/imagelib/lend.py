"""What of this machine's pip setup a container build must borrow: `-v host:container:ro`.

pip inside the build needs the host's pip configuration (private index, constraints), the
folders that configuration points at (`file://` indexes, find-links) and the CA bundle it
trusts (a TLS-intercepting proxy's CA). They are lent read-only for the build only, so no
layer keeps them. Environment variables (PIP_*) are not lent: put what the build needs into a
configuration file. Prints one `-v` argument per line. Standard library only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

CONTAINER_HOME = Path("/root")  # the build's RUN steps run as root
PATH_KEYS = ("index-url", "extra-index-url", "find-links", "cert", "client-cert", "constraint")
DEFAULT_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def config_files(home: Path) -> dict[Path, Path]:
    """pip's global and user configuration files that exist, host path -> container path."""
    files = {
        Path("/etc/pip.conf"): Path("/etc/pip.conf"),
        Path("/etc/xdg/pip"): Path("/etc/xdg/pip"),
    }
    for user in (Path(".config/pip/pip.conf"), Path(".pip/pip.conf")):
        files[home / user] = CONTAINER_HOME / user
    return {host: inside for host, inside in files.items() if host.exists()}


def configured_paths(python: str) -> set[Path]:
    """Local paths named by pip's configuration files (not its environment variables)."""
    listed = subprocess.run(  # noqa: S603 (our own interpreter, fixed arguments)
        [python, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    ).stdout
    paths: set[Path] = set()
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.startswith(":env:") or not key.endswith(PATH_KEYS):
            continue
        for item in value.strip("'\"").split():
            url = urlparse(item)
            if url.scheme == "file":
                folder = Path(unquote(url.path))
                # a `simple/` index links to its files with ../../files/...: lend its parent
                paths.add(folder.parent if folder.name == "simple" else folder)
            elif not url.scheme and item.startswith("/"):
                paths.add(Path(item))
    return {path for path in paths if path.exists()}


def mounts(python: str, home: Path) -> list[str]:
    lent = config_files(home)
    for path in configured_paths(python) | {DEFAULT_CA}:
        if path.exists() and not any(path.is_relative_to(host) for host in lent):
            lent[path] = path
    return [f"{host}:{inside}:ro" for host, inside in sorted(lent.items())]


if __name__ == "__main__":
    print("\n".join(mounts(sys.executable, Path(os.environ.get("HOME", "/root")))))
