"""`upstream.tls`: extra trusted CAs and a client certificate for the calls to Gini.

The files are checked when the config is loaded (readable regular files, complete PEM blocks and
nothing else, an unencrypted key that matches the certificate, not expired) so `check-config`
lists every problem. The SSL context built from them lives in `proxy.transport.tls`.
Verification is always on: there is deliberately no setting to turn it off.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.config.files import read_regular
from proxy.config.pem import PemError, split_pem_bytes
from proxy.config.reader import Reader


@dataclass(frozen=True, slots=True)
class TlsConfig:
    ca_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(
            p for p in (self.ca_file, self.client_cert_file, self.client_key_file) if p is not None
        )


def parse_tls(r: Reader, data: Mapping[str, Any]) -> TlsConfig | None:
    """Read and check `upstream.tls`; every problem is recorded on `r`."""
    keys = ("ca_file", "client_cert_file", "client_key_file")
    d = r.section(data, "tls", "upstream.tls", keys)
    if d is None:
        return None
    paths: dict[str, Path | None] = {}
    for key in keys:
        text = r.string(d, key, f"upstream.tls.{key}", "")
        paths[key] = (r.base_dir / text) if text else None
    config = TlsConfig(paths["ca_file"], paths["client_cert_file"], paths["client_key_file"])
    if not config.files:
        return None  # an all-empty section (as in the example config) is no section
    for key, message in tls_file_problems(config):
        r.problem(f"upstream.tls.{key}", message)
    return config


def tls_file_problems(config: TlsConfig) -> list[tuple[str, str]]:
    """(key, message) for every problem with the files; empty when a context can be built."""
    problems: list[tuple[str, str]] = []
    if config.ca_file is not None:
        problems.extend(("ca_file", m) for m in _ca_problems(config.ca_file))
    cert, key = config.client_cert_file, config.client_key_file
    if (cert is None) != (key is None):
        missing = "client_key_file" if key is None else "client_cert_file"
        problems.append((missing, "is required when the other half of the client pair is set"))
    elif cert is not None and key is not None:
        problems.extend(_pair_problems(cert, key))
    return problems


def _read(path: Path) -> tuple[bytes | None, str | None]:
    try:
        return read_regular(path), None  # a regular file: a FIFO would block check-config
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"


def _incomplete(path: Path, data: bytes) -> str | None:
    """Why a file that loads is still refused: text outside complete PEM blocks (the library
    would skip a half-written tail and load what comes before it)."""
    try:
        split_pem_bytes(data)
    except PemError as exc:
        return f"{path} {exc}"
    return None


# `cryptography` is imported where the files are checked, not at module load: it costs several
# MiB of RSS in every proxy, and only check-config and configs with TLS files need it.


def _ca_problems(path: Path) -> list[str]:
    from cryptography import x509  # noqa: PLC0415 - see above

    data, error = _read(path)
    if data is None:
        return [error or ""]
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        return [f"{path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"]
    incomplete = _incomplete(path, data)
    return [incomplete] if incomplete else []


def _pair_problems(cert_path: Path, key_path: Path) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    cert, problem = _certificate(cert_path)
    if problem:
        problems.append(("client_cert_file", problem))
    key, problem = _private_key(key_path)
    if problem:
        problems.append(("client_key_file", problem))
    if cert is not None:
        if cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC):
            expired = cert.not_valid_after_utc.date().isoformat()
            problems.append(("client_cert_file", f"{cert_path} expired on {expired}"))
        if key is not None and _spki(cert.public_key()) != _spki(key.public_key()):
            problems.append(
                ("client_key_file", f"{key_path} does not match the certificate in {cert_path}")
            )
    return problems


def _certificate(path: Path) -> tuple[Any, str | None]:
    """The leaf certificate of the file, or why there is none to use."""
    from cryptography import x509  # noqa: PLC0415 - see _ca_problems

    data, error = _read(path)
    if data is None:
        return None, error
    try:
        cert = x509.load_pem_x509_certificates(data)[0]  # the leaf comes first
    except ValueError:
        return None, f"{path} holds no PEM certificate"
    incomplete = _incomplete(path, data)
    return (None, incomplete) if incomplete else (cert, None)


def _private_key(path: Path) -> tuple[Any, str | None]:
    """The unencrypted private key of the file, or why there is none to use."""
    from cryptography.exceptions import UnsupportedAlgorithm  # noqa: PLC0415 - see _ca_problems
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    data, error = _read(path)
    if data is None:
        return None, error
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        return None, f"{path} is encrypted; give an unencrypted key"
    except (ValueError, UnsupportedAlgorithm):
        return None, f"{path} holds no PEM private key"
    incomplete = _incomplete(path, data)
    return (None, incomplete) if incomplete else (key, None)


def _spki(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der
