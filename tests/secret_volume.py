"""A folder laid out like a mounted Kubernetes Secret volume, updated the way the kubelet does."""

from __future__ import annotations

import os
from pathlib import Path


class SecretVolume:
    """A directory laid out like a mounted Kubernetes Secret: `NAME -> ..data/NAME`,
    `..data -> ..TIMESTAMP/`, and an update writes a new timestamped directory and flips
    `..data` atomically (a temporary symlink renamed over it), then removes the old one."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir()
        self.generation = 0

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, **files: str) -> None:
        self.generation += 1
        target = self.root / f"..2026_11_30_{self.generation:06d}"
        target.mkdir()
        for name, text in files.items():
            (target / name).write_text(text)
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        temporary = self.root / "..data_tmp"
        temporary.symlink_to(target.name)
        os.replace(temporary, data)
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        if old is not None:
            for stale in (self.root / old).iterdir():
                stale.unlink()
            (self.root / old).rmdir()
