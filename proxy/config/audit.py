"""`audit`: where the audit log goes (a file, or `-` for standard output) and whether an
action whose record cannot be written is refused."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.config.reader import Reader

STDOUT = "-"


@dataclass(frozen=True, slots=True)
class AuditConfig:
    path: Path | None  # None: standard output
    required: bool


def parse_audit(r: Reader, data: Mapping[str, Any]) -> AuditConfig | None:
    d = r.section(data, "audit", "audit", ("path", "required"))
    if d is None:
        return None
    text = r.string(d, "path", "audit.path")
    path: Path | None = None
    if text and text != STDOUT:
        path = Path(text) if Path(text).is_absolute() else r.base_dir / text
        if path.is_dir():
            r.problem("audit.path", f"{path} is a directory; name a file in it")
        elif not path.parent.is_dir():
            r.problem("audit.path", f"the directory {path.parent} does not exist")
    return AuditConfig(path=path, required=r.boolean(d, "required", "audit.required", False))
