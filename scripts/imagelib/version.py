"""Prints the project's version, the one source of it: `[project] version` in pyproject.toml.

scripts/image-test passes it to the build as `--build-arg VERSION=...` (the image label), so
the label is never a literal written by hand. Standard library only.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def project_version(pyproject: Path = PYPROJECT) -> str:
    with pyproject.open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


if __name__ == "__main__":
    print(project_version())
