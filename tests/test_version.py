"""One version source: `[project] version` in pyproject.toml (the package metadata).

Everything that states the version agrees with it: `proxy.__version__` (read from the installed
metadata), `/status`, `gini_proxy_build_info`, the `User-Agent` of the proxy's own calls to
Gini, the version scripts/image-test passes to the image label, the Kustomize image tags and
every version the docs state. The Dockerfile itself states none.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from aiohttp import web

from proxy import __version__
from tests.conftest import USER, StartProxy

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
SEMVER = r"\d+\.\d+\.\d+[0-9A-Za-z.+-]*"
# How a version is stated in the docs, the Dockerfile and the manifests.
STATED = re.compile(
    rf"gini-auth-proxy[:/](?P<a>{SEMVER})"  # image tags, User-Agent
    rf"|VERSION=(?P<b>{SEMVER})"  # build args
    rf"|\"version\": \"(?P<c>{SEMVER})\""  # /status
    rf"|version=\"(?P<d>{SEMVER})\""  # gini_proxy_build_info
    rf"|newTag: (?P<e>{SEMVER})"  # Kustomize
)


def _stated(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [next(v for v in m.groups() if v) for m in STATED.finditer(text)]


def _places() -> list[Path]:
    return [
        ROOT / "README.md",
        ROOT / "Dockerfile",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "deploy").rglob("*.yaml")),
    ]


def test_the_installed_package_reports_pyprojects_version() -> None:
    # scripts/bootstrap reinstalls when pyproject.toml changes, so the metadata follows it.
    assert __version__ == VERSION


def test_the_stated_pattern_finds_what_it_should() -> None:
    sample = 'gini-auth-proxy:1.2.3 VERSION=1.2.3 "version": "1.2.3" version="1.2.3" newTag: 1.2.3'
    assert STATED.sub("", sample).split() == []
    assert len(STATED.findall(sample)) == 5


def test_every_version_the_docs_and_manifests_state_is_pyprojects() -> None:
    stated = {str(path.relative_to(ROOT)): _stated(path) for path in _places()}
    wrong = {where: found for where, found in stated.items() if set(found) - {VERSION}}
    assert wrong == {}, f"pyproject.toml says {VERSION}"
    for overlay in ("sidecar", "standalone"):
        assert stated[f"deploy/overlays/{overlay}/kustomization.yaml"] == [VERSION]


def test_the_dockerfile_writes_no_version_and_the_image_test_passes_pyprojects() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^ARG VERSION=unknown$", dockerfile, re.MULTILINE)
    assert VERSION not in dockerfile
    script = (ROOT / "scripts" / "image-test").read_text(encoding="utf-8")
    assert '--build-arg VERSION="$(cd "$root/scripts" && "$py" -m imagelib.version)"' in script
    printed = subprocess.run(
        [sys.executable, "-m", "imagelib.version"],
        cwd=ROOT / "scripts",
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert printed == f"{VERSION}\n"


async def test_status_build_info_and_user_agent_carry_the_version(
    start_proxy: StartProxy,
) -> None:
    seen: list[str] = []

    async def login(request: web.Request) -> web.Response:
        seen.append(request.headers.get("User-Agent", ""))
        return web.json_response({"access_token": "t", "token_type": "bearer", "expires_in": 300})

    gini = web.Application()
    gini.router.add_post("/login", login)
    runner = web.AppRunner(gini)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        proxy = await start_proxy(upstream={"pay_api": f"http://{host}:{port}"})
        async with proxy.client.post(proxy.url + "/_proxy/tokens/derived", headers=USER) as r:
            assert r.status == 200, await r.text()
        async with proxy.client.get(proxy.admin_url + "/status") as r:
            assert (await r.json())["version"] == VERSION
        async with proxy.client.get(proxy.admin_url + "/metrics") as r:
            assert f'version="{VERSION}"' in await r.text()
    finally:
        await runner.cleanup()
    assert seen == [f"gini-auth-proxy/{VERSION}"]


@pytest.mark.parametrize("path", ["docs/deploy.md", "docs/operations.md"])
def test_the_docs_that_show_the_version_are_checked(path: str) -> None:
    # Guards the pattern: these files do show the version, so finding none means the pattern
    # (or the doc) drifted and the check above would pass vacuously.
    assert _stated(ROOT / path)
