"""`tracing`: OpenTelemetry traces exported over OTLP/HTTP (protobuf)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from proxy.config.reader import Reader
from proxy.config.secret import Secret

_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_SERVICE_NAME = re.compile(r"[A-Za-z0-9._/-]{1,128}")


@dataclass(frozen=True, slots=True)
class TracingConfig:
    otlp_endpoint: str
    headers: tuple[tuple[str, Secret], ...]  # sent with each export; values may be secrets
    sample_ratio: float  # requests that arrive without a sampled traceparent
    propagate_to_gini: bool
    service_name: str


def parse_tracing(r: Reader, data: Mapping[str, Any]) -> TracingConfig | None:
    keys = ("otlp_endpoint", "headers", "sample_ratio", "propagate_to_gini", "service_name")
    d = r.section(data, "tracing", "tracing", keys)
    if d is None:
        return None
    endpoint = r.string(d, "otlp_endpoint", "tracing.otlp_endpoint")
    parts = urlsplit(endpoint)
    if endpoint and (parts.scheme not in ("http", "https") or not parts.hostname):
        r.problem("tracing.otlp_endpoint", "must be an http:// or https:// URL with a host")
    elif endpoint and (parts.username or parts.password):
        r.problem("tracing.otlp_endpoint", "must not hold credentials; use tracing.headers")
    headers: list[tuple[str, Secret]] = []
    given = d.get("headers") or {}
    if not isinstance(given, Mapping):
        r.problem("tracing.headers", "must be a mapping of header name to value")
        given = {}
    for name in given:
        path = f"tracing.headers.{name}"
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            r.problem(path, "is not a valid HTTP header name")
            continue
        value = r.secret(given, name, path)
        if any(c in value.value for c in "\r\n\0"):
            r.problem(path, "must not contain line breaks")
        headers.append((name, value))
    service = r.string(d, "service_name", "tracing.service_name", "gini-auth-proxy")
    if not _SERVICE_NAME.fullmatch(service):
        r.problem("tracing.service_name", "must be 1-128 of A-Z a-z 0-9 . _ / -")
    return TracingConfig(
        otlp_endpoint=endpoint,
        headers=tuple(headers),
        sample_ratio=r.number(d, "sample_ratio", "tracing.sample_ratio", 0.05, 0, 1),
        propagate_to_gini=r.boolean(d, "propagate_to_gini", "tracing.propagate_to_gini", False),
        service_name=service,
    )
