"""The commands README's "Running it" and docs/simulator.md tell a newcomer to paste are
commands the parsers accept: a renamed flag must fail here, not in a newcomer's terminal."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from proxy.cli import _parser
from proxy.sandbox.__main__ import _parse_args

ROOT = Path(__file__).resolve().parent.parent


def commands(path: Path, start: str, end: str | None) -> list[list[str]]:
    text = path.read_text(encoding="utf-8")
    section = text[text.index(start) : text.index(end) if end else None]
    found = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        # Join continuation lines, drop comments and a trailing `&`.
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[-1] == "&":
                words = words[:-1]
            if words[:1] == ["gini-auth-proxy"] or words[:3] == ["python", "-m", "proxy.sandbox"]:
                found.append(words)
    return found


README = commands(ROOT / "README.md", "## Running it", "## Documentation")
SIMULATOR = commands(ROOT / "docs" / "simulator.md", "# Run the simulator", None)


def test_the_sections_hold_the_commands_a_newcomer_needs() -> None:
    used = {words[1] for words in README if words[0] == "gini-auth-proxy"}
    assert {"init", "check-config", "doctor", "serve"} <= used
    assert any(words[0] == "python" for words in README)
    assert any("--client-ca" in words for words in SIMULATOR)


@pytest.mark.parametrize("words", README + SIMULATOR, ids=" ".join)
def test_each_documented_command_parses(words: list[str]) -> None:
    if words[0] == "gini-auth-proxy":
        if "--help" in words:
            with pytest.raises(SystemExit, match="0"):
                _parser().parse_args(words[1:])
        else:
            _parser().parse_args(words[1:])
        return
    # Parsing builds the TLS context from the files, which only exist in the rehearsal: the
    # TLS flags and their values are left out (test_sandbox_tls.py runs them for real).
    args, rest = [], iter(words[3:])
    for word in rest:
        if word in ("--tls-cert", "--tls-key", "--client-ca"):
            next(rest)
        else:
            args.append(word)
    _parse_args(args)
