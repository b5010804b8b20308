"""The container image, built and run by scripts/image-test (podman).

The script builds the Dockerfile (on a debootstrap stand-in base when the real one cannot be
pulled), runs the image read-only as uid 10001 with `demo` serving flows 1-4, runs its
HEALTHCHECK, stops it with SIGTERM and reports the size it adds to its base. Afterwards the
image is gone, and so is the base unless it was there before (GINI_PROXY_KEEP_IMAGE=1 keeps
both, for inspection and a faster next run). Where podman is missing or unusable the test skips
with the reason; under CI=true it fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "image-test"
# A cold run makes the stand-in base with debootstrap (minutes); later runs reuse it.
TIMEOUT_SECONDS = 1500
IMAGE = "localhost/gini-auth-proxy:image-test"
STANDIN = "localhost/gini-auth-proxy-standin-base:bookworm-1"


def _image_exists(name: str) -> bool:
    done = subprocess.run(
        ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "image", "exists", name],
        check=False,
        timeout=120,
    )
    return done.returncode == 0


def _unusable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(reason)


def _podman_problem() -> str | None:
    """Why podman cannot build and run images here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed (scripts/tools installs it, as root, with apt-get)"
    if os.geteuid() != 0:
        return "scripts/image-test needs root (debootstrap, podman's root storage)"
    try:
        done = subprocess.run(
            ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs", "info"],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        return "`podman info` did not answer within 120 s"
    if done.returncode != 0:
        return f"podman is unusable here: {done.stderr.strip()[-300:]}"
    return None


@pytest.mark.slow
def test_image_builds_and_runs() -> None:
    problem = _podman_problem()
    if problem is not None:
        _unusable(problem)
    keep = os.environ.get("GINI_PROXY_KEEP_IMAGE") == "1"
    standin_before = _image_exists(STANDIN)
    try:
        done = subprocess.run(
            [str(SCRIPT)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
            timeout=TIMEOUT_SECONDS,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/image-test took over {TIMEOUT_SECONDS} s: {exc.stdout!r}")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    for check in (
        "PID 1 runs as uid 10001",
        "root filesystem read-only",
        "flows 1-4 served by the image",
        "HEALTHCHECK passes",
        "exited 0 after SIGTERM",
        "the image adds",
    ):
        assert check in done.stdout, output[-6000:]
    if not keep:
        assert not _image_exists(IMAGE), "the image was left behind"
        if not standin_before:
            assert not _image_exists(STANDIN), "the stand-in base it made was left behind"
