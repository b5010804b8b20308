"""A reader over parsed YAML that collects every problem instead of stopping at the first.

`Reader` methods return a usable fallback when a value is bad and record the problem with its
key path (`upstream.timeout_seconds: ...`), so one run of `check-config` lists them all.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from proxy.config.secret import Secret, SecretSourceError, resolve_secret

T = TypeVar("T")

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PLACEHOLDER = Secret("invalid", "invalid")


class ConfigError(Exception):
    """The configuration has problems; `problems` lists every one as `path: message`."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def unknown_key_message(key: str, allowed: Iterable[str]) -> str:
    """ "did you mean" the closest valid key at that level, or all of them when none is close."""
    known = sorted(allowed)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key (known here: {', '.join(known)})"


class Reader:
    """Typed access to a mapping with problem collection and `${VAR}` expansion."""

    def __init__(self, env: Mapping[str, str], base_dir: Path):
        self.env = env
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}" if path else message)

    def expand(self, value: str, path: str) -> str:
        """Expand `${VAR}` and `${VAR:-default}`; `$$` is a literal `$`."""

        def substitute(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if name in self.env and (self.env[name] or default is None):
                return self.env[name]
            if default is not None:
                return default
            self.problem(path, f"environment variable {name} is not set and has no default")
            return ""

        return _VAR.sub(substitute, value) if "$" in value else value

    def section(
        self, data: Mapping[str, Any], key: str, path: str, known: Iterable[str]
    ) -> dict[str, Any] | None:
        """A nested mapping (None if absent); unknown keys in it are problems."""
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.problem(path, "must be a mapping")
            return None
        self.check_keys(value, path, known)
        return dict(value)

    def check_keys(self, data: Mapping[str, Any], path: str, known: Iterable[str]) -> None:
        allowed = set(known)
        prefix = f"{path}." if path else ""
        for key in data:
            if key not in allowed:
                self.problem(f"{prefix}{key}", unknown_key_message(str(key), allowed))

    def shown(self, data: Mapping[str, Any], key: str, value: object) -> str:
        """`value` for a message, with where it came from when a variable produced it:
        `$MAX_BODY = "10MiB"`. Only for plain settings: secrets are never shown."""
        raw = data.get(key)
        text = json.dumps(value) if isinstance(value, str) else repr(value)
        if isinstance(raw, str) and "${" in raw:
            whole = _VAR.fullmatch(raw)
            if whole is not None and whole.group(1):
                return f"${whole.group(1)} = {text}"
            return f"{text} (from {json.dumps(raw)})"
        if isinstance(value, Mapping | list):
            return f"a {'mapping' if isinstance(value, Mapping) else 'list'}"
        return text

    def raw(self, data: Mapping[str, Any], key: str, path: str) -> object:
        value = data.get(key)
        return self.expand(value, path) if isinstance(value, str) else value

    def string(
        self, data: Mapping[str, Any], key: str, path: str, default: str | None = None
    ) -> str:
        before = len(self.problems)
        value = self.raw(data, key, path)
        if value is None or value == "":
            if default is None:
                if len(self.problems) == before:  # not already reported as a missing variable
                    self.problem(path, "is required")
                return ""
            return default
        if not isinstance(value, str):
            self.problem(path, f"must be a string, not {type(value).__name__}")
            return default or ""
        return value

    def integer(
        self, data: Mapping[str, Any], key: str, path: str, default: int, lo: int, hi: int
    ) -> int:
        value = self.raw(data, key, path)
        if value is None:
            return default
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            value = int(value)  # `${PORT}` expands to text ("²".isdigit() is True too)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(path, f"must be an integer, got {self.shown(data, key, value)}")
            return default
        if not lo <= value <= hi:
            self.problem(path, f"must be between {lo} and {hi}, got {self.shown(data, key, value)}")
            return default
        return value

    def number(
        self, data: Mapping[str, Any], key: str, path: str, default: float, lo: float, hi: float
    ) -> float:
        value = self.raw(data, key, path)
        if value is None:
            return default
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)  # `${TIMEOUT}` expands to text
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(path, f"must be a number, got {self.shown(data, key, value)}")
            return default
        if not lo <= value <= hi:
            got = self.shown(data, key, value)
            self.problem(path, f"must be between {lo:g} and {hi:g}, got {got}")
            return default
        return float(value)

    def boolean(self, data: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        value = self.raw(data, key, path)
        if value is None:
            return default
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            self.problem(path, f"must be true or false, got {self.shown(data, key, value)}")
            return default
        return value

    def secret(self, data: Mapping[str, Any], key: str, path: str) -> Secret:
        """A required secret; a placeholder is returned (and a problem recorded) when bad."""
        spec = data.get(key)
        if spec is None:
            self.problem(path, "is required (a string, {env: NAME} or {file: PATH})")
            return _PLACEHOLDER
        before = len(self.problems)
        if isinstance(spec, str):
            spec = self.expand(spec, path)
        elif isinstance(spec, Mapping) and len(spec) == 1:
            # `{file: "${SECRETS_DIR}/key"}`: expansion applies to every string of the config.
            ((kind, name),) = spec.items()
            if isinstance(name, str):
                spec = {kind: self.expand(name, path)}
        if len(self.problems) > before:  # an unset variable: "is empty" would say it twice
            return _PLACEHOLDER
        try:
            return resolve_secret(spec, self.env, self.base_dir)
        except SecretSourceError as exc:
            self.problem(path, str(exc))
            return _PLACEHOLDER

    def items(self, data: Mapping[str, Any], key: str, path: str, kind: type[T]) -> list[T]:
        value = data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(path, "must be a list")
            return []
        good: list[T] = []
        for index, raw in enumerate(value):
            item = self.expand(raw, f"{path}[{index}]") if isinstance(raw, str) else raw
            if isinstance(item, kind):
                good.append(item)
            else:
                self.problem(f"{path}[{index}]", f"must be a {kind.__name__}")
        return good


def yaml_problem(path: Path, exc: yaml.YAMLError) -> str:
    """The parser's own reason, where it found it, and where the construct it was reading
    began (an unclosed bracket is noticed lines later): e.g.
    `config.yaml is not valid YAML at line 3, column 1: found character '\\t' that cannot start
    any token (indent with spaces, not tabs)`."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    message = f"{path} is not valid YAML{where}: {problem}"
    if "'\\t'" in problem:
        message += " (indent with spaces, not tabs)"
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and start is not None and (mark is None or start.line != mark.line):
        message += f", {context} that began at line {start.line + 1}, column {start.column + 1}"
    return message  # not the line itself: it may hold an inline secret
