"""`--help`: every command has a one-line description and an example, every argument help."""

from __future__ import annotations

import argparse

import pytest

from proxy.cli import _parser, main


def subcommands() -> dict[str, argparse.ArgumentParser]:
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_command_is_described_in_the_overview() -> None:
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            described = {choice.dest: choice.help for choice in action._choices_actions}
            assert set(described) == set(action.choices)
            assert all(described.values()), described


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_command_help_has_description_example_and_argument_help(name: str) -> None:
    command = subcommands()[name]
    assert command.description
    assert "\n" not in command.description.strip()
    assert command.epilog is not None
    assert f"gini-auth-proxy {name}" in command.epilog
    for action in command._actions:
        assert action.help, f"{name}: {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_help_prints_and_exits_0(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as leaving:
        main([name, "--help"])
    assert leaving.value.code == 0
    out = capsys.readouterr().out
    assert "example:" in out
    assert f"gini-auth-proxy {name}" in out


def test_examples_parse() -> None:
    """An example that the parser itself rejects would teach a wrong command."""
    for name, command in subcommands().items():
        assert command.epilog is not None
        for line in command.epilog.splitlines()[1:]:
            words = line.split()
            assert words[:2] == ["gini-auth-proxy", name]
            _parser().parse_args(words[1:])
