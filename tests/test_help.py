"""Every command's ``--help``, as a real process at 80 columns: readable metavars and at least one example.

The commands are read from the Typer app itself, so a new command is checked
without anyone adding it here.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer.main

from mailops.cli import app
from tests.fixtures_cli import run_mailops

#: what Typer writes when a parameter has no metavar: its Python type
TYPE_METAVAR = re.compile(r"<(list|int|float|str|path|bool|text|file|choice)\b|range>|\{[a-z_]+\}", re.I)


def _leaf_commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        return [path]
    return [leaf for name, sub in sorted(subcommands.items()) for leaf in _leaf_commands(sub, (*path, name))]


COMMANDS = _leaf_commands(typer.main.get_command(app))


def test_every_command_is_found():
    names = {" ".join(path) for path in COMMANDS}
    assert {"send", "init", "queue cancel", "password status", "suppress import", "sendmail"} <= names
    assert len(names) >= 27, names


def _usage_and_options(text: str) -> str:
    """The help without its examples (an example may hold any text)."""
    return text.split("Examples:", 1)[0]


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_names_values_readably_and_shows_an_example(path):
    result = run_mailops(*path, "--help", env={"COLUMNS": "80"})

    assert (result.exit_code, result.stderr) == (0, ""), result.output
    help_text = result.stdout
    assert [line for line in help_text.splitlines() if len(line) > 80] == []  # cron mail, pipes, an 80-column terminal
    assert not TYPE_METAVAR.search(_usage_and_options(help_text)), help_text
    assert "Examples:" in help_text, help_text
    shown = help_text.split("Examples:", 1)[1].splitlines()[1:]
    shown = [line.strip() for line in shown if line.strip()]
    assert shown, help_text
    command = " ".join(path)
    assert all(f"mailops {command}" in line for line in shown), (command, shown)


def test_send_help_shows_the_metavars_an_operator_expects():
    text = run_mailops("send", "--help", env={"COLUMNS": "80"}).stdout

    for expected in ("--to ADDR", "--limit N", "-d, --data FILE", "--at WHEN", "--var KEY=VALUE", "--batch KEY"):
        assert expected in text, (expected, text)


def test_arguments_show_their_metavar_alone():
    text = run_mailops("queue", "cancel", "--help", env={"COLUMNS": "80"}).stdout

    assert text.splitlines()[0] == "Usage: mailops queue cancel [OPTIONS] [ID]"
    assert "\n  ID  Message id." in text
    suppress = run_mailops("suppress", "add", "--help", env={"COLUMNS": "80"}).stdout
    assert suppress.splitlines()[0] == "Usage: mailops suppress add [OPTIONS] ADDR..."


def test_mailops_help_ends_with_examples():
    text = run_mailops("--help", env={"COLUMNS": "80"}).stdout

    assert text.rstrip().splitlines()[-5:] == [
        "  Examples:",
        "    mailops init                 # starter files, then the next steps",
        "    mailops send -r renewal -t renewal -d customers.csv --dry-run",
        "    mailops deliver -q           # from cron: send what is due",
        "    mailops send --help          # any command's options and examples",
    ]
