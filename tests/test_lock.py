"""requirements.lock: the image's hash-checked pins, kept in sync with pyproject.toml.

The sync check needs no network: every runtime requirement of pyproject.toml (markers
evaluated for the image, CPython 3.11 on Linux) must be pinned in the lock at a version it
allows, every pin must carry hashes, and the lock's direct dependencies (uv's `# via
gini-auth-proxy (pyproject.toml)`) must be exactly pyproject's. Regenerate with `scripts/lock`.
`pip-audit` runs over the lock when a vulnerability service answers, else it skips.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .conftest import examples

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PROJECT = "gini-auth-proxy (pyproject.toml)"
# The image's interpreter: markers in pyproject are evaluated for it.
IMAGE_ENV = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "implementation_name": "cpython",
    "python_version": "3.11",
    "python_full_version": "3.11.14",
}
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass
class Pin:
    name: str
    version: str
    hashes: list[str] = field(default_factory=list)
    via: set[str] = field(default_factory=set)


def parse_lock(text: str) -> dict[str, Pin]:
    """uv's / pip-compile's format: `name==version \\`, `--hash=` lines, `# via` comments."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    in_via = False
    for raw in text.splitlines():
        line = raw.strip().removesuffix("\\").strip()
        if not line:
            continue
        if not raw[0].isspace() and not line.startswith("#"):
            name, _, version = line.split(";")[0].strip().partition("==")
            current = Pin(canonicalize_name(name), version.strip())
            pins[current.name] = current
            in_via = False
        elif current is None:
            continue
        elif line.startswith("--hash="):
            current.hashes.append(line)
        elif line.startswith("# via"):
            rest = line.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                current.via.add(rest)
        elif in_via and line.startswith("#   "):
            current.via.add(line.removeprefix("#").strip())
    return pins


def runtime_requirements(pyproject: str) -> list[Requirement]:
    """pyproject's `dependencies` that apply to the image."""
    listed = tomllib.loads(pyproject)["project"]["dependencies"]
    requirements = [Requirement(item) for item in listed]
    return [r for r in requirements if r.marker is None or r.marker.evaluate(IMAGE_ENV)]


def lock_problems(pyproject: str, lock: str) -> list[str]:
    """Every way the lock is out of sync with pyproject (empty when in sync)."""
    pins = parse_lock(lock)
    problems = []
    wanted = runtime_requirements(pyproject)
    for requirement in wanted:
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement.name} is not pinned")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{pin.name}=={pin.version} does not satisfy {requirement}")
    direct = {pin.name for pin in pins.values() if PROJECT in pin.via}
    for name in sorted(direct - {canonicalize_name(r.name) for r in wanted}):
        problems.append(f"{name} is pinned as a direct dependency pyproject no longer has")
    for pin in pins.values():
        if not pin.version or not pin.hashes or not all(HASH.fullmatch(h) for h in pin.hashes):
            problems.append(f"{pin.name} is not pinned to one version with sha256 hashes")
        if not pin.via:
            problems.append(f"{pin.name} says nothing about why it is pinned")
    return problems


# --- the committed lock -----------------------------------------------------------------------


def test_lock_is_in_sync_with_pyproject() -> None:
    problems = lock_problems((ROOT / "pyproject.toml").read_text(), LOCK.read_text())
    assert not problems, "requirements.lock is out of date, run scripts/lock:\n" + "\n".join(
        problems
    )


def test_lock_is_used_by_the_dockerfile_with_hashes() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    assert re.search(r"pip install [^\n]*--require-hashes -r requirements\.lock", dockerfile)
    assert "!requirements.lock" in (ROOT / ".dockerignore").read_text().splitlines()


# --- the check itself fails when it should -----------------------------------------------------

PYPROJECT = """
[project]
name = "gini-auth-proxy"
dependencies = ["aiohttp>=3.10,<4", "uvloop>=0.19; sys_platform != 'win32'",
                "pywin32>=300; sys_platform == 'win32'"]
"""
H = "    --hash=sha256:" + "ab" * 32
LOCK_TEXT = f"""# This file was autogenerated by uv via the following command:
#    scripts/lock
aiohttp==3.14.5 \\
{H}
    # via gini-auth-proxy (pyproject.toml)
multidict==7.2.1 \\
{H}
    # via
    #   aiohttp
    #   yarl
uvloop==0.23.0 \\
{H}
    # via gini-auth-proxy (pyproject.toml)
"""


def test_sync_check_accepts_a_matching_lock() -> None:
    assert lock_problems(PYPROJECT, LOCK_TEXT) == []  # pywin32 does not apply on Linux


@pytest.mark.parametrize(
    ("pyproject", "lock", "problem"),
    [
        (PYPROJECT.replace('"aiohttp', '"redis>=5", "aiohttp'), LOCK_TEXT, "redis is not pinned"),
        (PYPROJECT.replace(">=3.10,<4", ">=4"), LOCK_TEXT, "does not satisfy aiohttp>=4"),
        (
            PYPROJECT.replace("\"uvloop>=0.19; sys_platform != 'win32'\",", ""),
            LOCK_TEXT,
            "uvloop is pinned as a direct dependency",
        ),
        (PYPROJECT, LOCK_TEXT.replace(H + "\n    # via\n", "    # via\n"), "multidict is not"),
        (PYPROJECT, LOCK_TEXT.replace("    # via\n    #   aiohttp\n    #   yarl\n", ""), "why"),
    ],
    ids=["added-dependency", "excluded-version", "removed-dependency", "no-hash", "no-via"],
)
def test_sync_check_reports_drift(pyproject: str, lock: str, problem: str) -> None:
    assert any(problem in found for found in lock_problems(pyproject, lock))


names = st.from_regex(r"[a-z][a-z0-9]{0,8}(-[a-z0-9]{1,5})?", fullmatch=True)
versions = st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,3}", fullmatch=True)
hexes = st.binary(min_size=32, max_size=32).map(bytes.hex)


@settings(max_examples=examples(100))
@given(
    st.dictionaries(
        names,
        st.tuples(versions, st.lists(hexes, min_size=1, max_size=3), st.sets(names, max_size=3)),
        max_size=6,
    )
)
def test_parse_lock_reads_what_uv_writes(
    entries: dict[str, tuple[str, list[str], set[str]]],
) -> None:
    text = "# This file was autogenerated by uv via the following command:\n#    scripts/lock\n"
    for name, (version, hashes, via) in entries.items():
        text += f"{name}=={version} \\\n"
        text += " \\\n".join(f"    --hash=sha256:{h}" for h in hashes) + "\n"
        if len(via) == 1:
            text += f"    # via {next(iter(via))}\n"
        elif via:
            text += "    # via\n" + "".join(f"    #   {v}\n" for v in sorted(via))
    pins = parse_lock(text)
    assert set(pins) == {canonicalize_name(name) for name in entries}
    for name, (version, hashes, via) in entries.items():
        pin = pins[canonicalize_name(name)]
        assert (pin.version, pin.via) == (version, via)
        assert pin.hashes == [f"--hash=sha256:{h}" for h in hashes]


# --- pip-audit ---------------------------------------------------------------------------------

# pip-audit's services: PyPI's JSON API per release (`-s pypi`, the default) and OSV (`-s osv`).
# Each is asked about one pinned release, as pip-audit will: a mirror that serves the index but
# not that API answers 404, and pip-audit could audit nothing.


def _reachable_service(pin: Pin) -> tuple[str | None, list[str]]:
    query = (
        f'{{"package": {{"name": "{pin.name}", "ecosystem": "PyPI"}}, "version": "{pin.version}"}}'
    )
    probes = {
        "pypi": urllib.request.Request(f"https://pypi.org/pypi/{pin.name}/{pin.version}/json"),
        "osv": urllib.request.Request("https://api.osv.dev/v1/query", data=query.encode()),
    }
    reasons: list[str] = []
    for service, request in probes.items():
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                if answer.status == 200:
                    return service, reasons
                reasons.append(f"{service}: HTTP {answer.status}")
        except (urllib.error.URLError, OSError) as exc:
            reasons.append(f"{service} ({request.full_url}): {exc}")
    return None, reasons


@pytest.mark.slow
def test_pip_audit_over_the_lock() -> None:
    service, reasons = _reachable_service(next(iter(parse_lock(LOCK.read_text()).values())))
    if service is None:
        # Not a tool missing: the audit needs a service this network may not reach.
        pytest.skip("no vulnerability service reachable: " + "; ".join(reasons))
    audit = Path(sys.executable).parent / "pip-audit"
    assert audit.exists(), "pip-audit comes with the dev extras"
    done = subprocess.run(
        [
            str(audit),
            "--strict",
            "--progress-spinner",
            "off",
            "--vulnerability-service",
            service,
            "--disable-pip",
            "--require-hashes",
            "--requirement",
            str(LOCK),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
